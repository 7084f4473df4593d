#!/usr/bin/env python3
"""Prompt-tunes a small sentiment task on a running PromptLearning service, printing the job's
progress, then asks the new task for answers.

    npm start                                   # the service, on the shipped tiny model
    python examples/train_and_infer.py [--address 127.0.0.1:50051] [--token T] [--steps 4]

The token comes from --token or AUTH_TOKEN (needed when the service has one); --tls or
--tls-ca ca.pem reach a TLS service. A few steps on six inline sentences: a demonstration of the
calls, not a useful classifier (train on data/splits/sentiment_train.jsonl for that).
"""
import argparse
import os
import sys

from promptlearning import (DEFAULT_ADDRESS, PromptLearningClient, PromptLearningError, dataset,
                            describe_event, pb)

SENTENCES = [
    ("the film was wonderful", "positive"),
    ("a dull, tiring mess", "negative"),
    ("great acting and a fine story", "positive"),
    ("i hated every minute", "negative"),
    ("a joy from start to end", "positive"),
    ("boring and far too long", "negative"),
]
LABELS = ["positive", "negative"]


def train_config(task: str, steps: int) -> pb.TrainConfig:
    """Prompt tuning of `task`: 4 virtual tokens before each sentence, batch 3, validated at the
    end on one batch."""
    records = [{"taskname": task, "sentence": s, "label": label} for s, label in SENTENCES]
    return pb.TrainConfig(
        name=f"{task}-example",
        new_tasks=[task],
        task_templates=[pb.TaskTemplate(
            taskname=task,
            prompt_template="<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            prompt_template_fields=["sentence", "label"],
            total_virtual_tokens=4,
            virtual_token_splits=[4],
            answer_field="label",
            truncate_field="sentence",
            max_seq_length=64,
        )],
        virtual_prompt_style=pb.VIRTUAL_PROMPT_STYLE_PROMPT_TUNING,
        prompt_tuning=pb.PromptTuningOptions(init_method=pb.PromptTuningOptions.INIT_METHOD_TEXT,
                                             init_text="classify the sentiment"),
        optim=pb.Optimizer(lr=0.01),
        max_steps=steps,
        max_epochs=100,
        global_batch_size=3,
        micro_batch_size=3,
        val_check_interval=steps,
        log_every_n_steps=1,
        train_ds=dataset(records),
        validation_ds=dataset(records[:3]),
    )


def run(client: PromptLearningClient, args: argparse.Namespace) -> None:
    with client:
        client.wait_for_ready(timeout=10)
        done = client.train_and_wait(train_config(args.task, args.steps),
                                     on_event=lambda e: print(describe_event(e), flush=True))
        version = done.completed.written[0].version
        task = client.get_task(args.task, version)
        print(f"task {task.name} v{task.version}: {task.total_virtual_tokens} virtual tokens of "
              f"{task.hidden_size} values")

        for sentence in ["a wonderful, moving film", "dull and far too long"]:
            best = client.infer_one(args.task, {"sentence": sentence}, version=version,
                                    choices=LABELS)
            scores = ", ".join(f"{c.text} {c.probability:.2f}" for c in best.choices)
            print(f"{sentence!r} -> {best.text} ({scores})")
        generated = client.infer_one(args.task, {"sentence": "i loved it"}, version=version,
                                     max_new_tokens=3)
        print(f"'i loved it' generates {generated.text!r} ({len(generated.token_ids)} tokens)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=DEFAULT_ADDRESS)
    ap.add_argument("--token", default=os.environ.get("AUTH_TOKEN"))
    ap.add_argument("--tls", action="store_true", help="TLS with the default roots")
    ap.add_argument("--tls-ca", help="TLS with this CA certificate (PEM file)")
    ap.add_argument("--task", default="sentiment_py", help="the task to write (a new version)")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()

    tls = args.tls_ca or args.tls
    try:
        run(PromptLearningClient(args.address, token=args.token or None, tls=tls), args)
    except (PromptLearningError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
