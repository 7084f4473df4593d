/**
 * The golden soft-prompt case of test/fixtures/golden.safetensors (`pt.*`, PEFT 0.21 on
 * models/tiny-gpt2) as a served sentiment task: 10 prompt rows split 5 + 5 around the sentence,
 * then " sentiment:", and the label with EOS, as PEFT scored " positive" + EOS there.
 */
import { parseSafetensors, readFloat32, readInt32 } from "../../model/safetensors.ts";
import { validateTemplate } from "../../prompts/template.ts";
import type { ServedTask } from "../inference_service.ts";

const GOLDEN = new URL("../../../test/fixtures/golden.safetensors", import.meta.url);

/** PEFT's loss of the label " positive" + EOS after the soft prompt: the mean over its tokens. */
export const GOLDEN_LABEL_LOSS = 0.5899635;

export async function goldenSentimentTask(name = "sentiment"): Promise<{
  task: ServedTask;
  /** The case's sentence and label ids, and its mid text's ids (" sentiment:"). */
  inputIds: Int32Array;
  midIds: Int32Array;
  labelIds: Int32Array;
}> {
  const g = parseSafetensors(await Deno.readFile(GOLDEN), "golden.safetensors");
  return {
    task: {
      name,
      version: 1,
      totalVirtualTokens: 10,
      table: readFloat32(g, "pt.prompt"),
      template: validateTemplate({
        taskname: name,
        prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}<|VIRTUAL_PROMPT_1|> sentiment: {label}",
        prompt_template_fields: ["sentence", "label"],
        total_virtual_tokens: 10,
        virtual_token_splits: [5, 5],
        answer_field: "label",
      }, "golden"),
    },
    inputIds: readInt32(g, "pt.input_ids"),
    midIds: readInt32(g, "pt.mid_ids"),
    labelIds: readInt32(g, "pt.label_ids"),
  };
}
