import { assertEquals, assertThrows } from "../../test/assert.ts";
import { ServiceError } from "../errors.ts";
import { checkpointName, TopK } from "./top_k.ts";

Deno.test("checkpointName() fills Lightning's filename pattern with metric names inserted", () => {
  assertEquals(
    checkpointName("megatron_gpt_prompt_tune--{val_loss:.3f}-{step}", {
      val_loss: 0.41234,
      step: 120,
    }),
    "megatron_gpt_prompt_tune--val_loss=0.412-step=120",
  );
  // Nothing in a name climbs out of the run directory.
  assertEquals(checkpointName("../{step}/x", { step: 3 }), "step=3_x");
  assertThrows(() => checkpointName("{val_acc}", { val_loss: 1 }), ServiceError, "{val_acc}");
  assertThrows(() => checkpointName("latest", {}), ServiceError, "usable checkpoint name");
});

Deno.test("TopK keeps the k best (strictly better than the worst kept evicts it); -1 all, 0 none", () => {
  const k = new TopK(2, "min");
  const e = (score: number, step: number) => ({ name: `s${step}`, score, step });
  assertEquals(k.consider(e(0.5, 1)), { keep: true, evict: [] });
  assertEquals(k.consider(e(0.7, 2)), { keep: true, evict: [] });
  assertEquals(k.consider(e(0.7, 3)), { keep: false, evict: [] }); // a tie does not displace
  assertEquals(k.consider(e(0.4, 4)), { keep: true, evict: [e(0.7, 2)] });
  assertEquals(k.kept.map((x) => x.step).sort(), [1, 4]);
  assertEquals(k.consider(e(NaN, 5)).keep, false);
  const max = new TopK(1, "max", [e(0.5, 1)]);
  assertEquals(max.consider(e(0.6, 2)), { keep: true, evict: [e(0.5, 1)] });
  assertEquals(new TopK(0, "min").consider(e(0.1, 1)).keep, false);
  const all = new TopK(-1, "min");
  for (let i = 0; i < 5; i++) all.consider(e(i, i));
  assertEquals(all.kept.length, 5);
});
