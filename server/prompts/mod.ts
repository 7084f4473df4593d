/** The text side of prompt learning: task templates, tokenized examples and datasets. */
export type { TaskTemplate } from "./template_types.ts";
export {
  type DropReason,
  type TokenizedExample,
  tokenizeExample,
  type TokenizeOptions,
  type TokenizeResult,
  validateTemplate,
} from "./template.ts";
export {
  type BadLine,
  BadLinesError,
  type Dataset,
  type DatasetSource,
  type InlineRecords,
  loadDataset,
  type LoadDatasetOptions,
} from "./dataset.ts";
