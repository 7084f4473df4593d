/** What every byte-level BPE vocabulary (GPT-2, SmolLM2, Qwen2, Llama 3) is spelt in. */

/**
 * GPT-2's reversible byte -> character map: printable Latin-1 bytes map to themselves, the rest
 * to U+0100 onwards, so every token is a string of visible characters.
 */
export function byteToUnicode(): string[] {
  const table: string[] = new Array(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    table[b] = String.fromCharCode(printable ? b : 256 + next++);
  }
  return table;
}
