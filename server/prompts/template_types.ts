/**
 * A task template as NeMo's prompt-learning config spells it (`task_templates` entries).
 * Validation lives in `template.ts`; this file only fixes the shape so that lower and
 * sibling layers (the registry) can store it.
 */
export interface TaskTemplate {
  /** Task name: `[A-Za-z0-9_.-]{1,64}`. */
  taskname: string;
  /** e.g. "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}" */
  prompt_template: string;
  /** Fields in order of appearance; the answer field is last. */
  prompt_template_fields: string[];
  total_virtual_tokens: number;
  /** One count per <|VIRTUAL_PROMPT_n|> marker, summing to total_virtual_tokens. */
  virtual_token_splits: number[];
  /** Field cut when an example is longer than max_seq_length; null: drop the example. */
  truncate_field: string | null;
  /** The field whose tokens carry the loss (and that inference generates). */
  answer_field: string;
  answer_only_loss: boolean;
  add_bos: boolean;
  add_eos: boolean;
  max_seq_length: number;
  min_seq_length: number;
}
