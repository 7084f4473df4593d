"""Calls every PromptLearning RPC (and health) from Python, with stubs generated from proto/.

Usage: call_every_rpc.py <proto dir> <address> <token>
Run by test/grpc_python_test.ts against the real services (tiny model, in-memory registry);
exits non-zero on any mismatch.
Needs Debian's python3-grpcio, python3-protobuf, protobuf-compiler and protobuf-compiler-grpc.
"""
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

import grpc

PROTO_DIR, ADDRESS, TOKEN = sys.argv[1], sys.argv[2], sys.argv[3]

def generate(out):
    """protoc (Debian's protobuf-compiler) with grpc_python_plugin (protobuf-compiler-grpc)."""
    # health.proto is copied to plhealth/: a module path under grpc/ would shadow grpcio itself.
    os.makedirs(os.path.join(out, "src", "plhealth"))
    shutil.copy(os.path.join(PROTO_DIR, "grpc/health/v1/health.proto"),
                os.path.join(out, "src", "plhealth", "health.proto"))
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    jobs = [(PROTO_DIR, "promptlearning/v1/prompt_learning.proto"),
            (os.path.join(out, "src"), "plhealth/health.proto")]
    for root, f in jobs:
        subprocess.run(["protoc", f"-I{root}", "-I/usr/include", f"--python_out={out}",
                        f"--grpc_python_out={out}", f"--plugin=protoc-gen-grpc_python={plugin}",
                        os.path.join(root, f)], check=True)
    sys.path.insert(0, out)


def expect_code(fn, code, contains=""):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        assert contains in e.details(), f"{contains!r} not in {e.details()!r}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


def main():
    out = tempfile.mkdtemp(prefix="plstubs")
    generate(out)
    pb = importlib.import_module("promptlearning.v1.prompt_learning_pb2")
    rpc = importlib.import_module("promptlearning.v1.prompt_learning_pb2_grpc")
    health_pb = importlib.import_module("plhealth.health_pb2")
    health_rpc = importlib.import_module("plhealth.health_pb2_grpc")

    channel = grpc.insecure_channel(ADDRESS)
    stub = rpc.PromptLearningStub(channel)
    auth = [("authorization", f"Bearer {TOKEN}")]
    called = set()

    # Health
    h = health_rpc.HealthStub(channel)
    assert h.Check(health_pb.HealthCheckRequest(service="")).status == health_pb.HealthCheckResponse.SERVING
    watch = h.Watch(health_pb.HealthCheckRequest(service="promptlearning.v1.PromptLearning"))
    assert next(watch).status == health_pb.HealthCheckResponse.SERVING
    watch.cancel()

    # Tasks
    template = pb.TaskTemplate(
        prompt_template="<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
        prompt_template_fields=["sentence", "label"], total_virtual_tokens=2,
        virtual_token_splits=[2], answer_field="label")
    hidden = 256  # the shipped tiny model's n_embd
    table = pb.PromptTable(rows=2, hidden=hidden, values=[0.01 * (i % 7) for i in range(2 * hidden)])
    expect_code(lambda: stub.RegisterTask(pb.RegisterTaskRequest(name="py", template=template, table=table)),
                grpc.StatusCode.UNAUTHENTICATED)
    expect_code(lambda: stub.RegisterTask(pb.RegisterTaskRequest(name="../py", template=template, table=table), metadata=auth),
                grpc.StatusCode.INVALID_ARGUMENT, "name must match")
    t = stub.RegisterTask(pb.RegisterTaskRequest(name="py", template=template, table=table), metadata=auth)
    assert (t.name, t.version, t.total_virtual_tokens) == ("py", 1, 2), t
    called.add("RegisterTask")
    fixture = os.path.join(os.path.dirname(__file__), "..", "fixtures", "peft_prompt_tuning_sentiment")
    with open(os.path.join(fixture, "adapter_config.json"), "rb") as f:
        config_json = f.read()
    with open(os.path.join(fixture, "adapter_model.safetensors"), "rb") as f:
        weights = f.read()
    peft = pb.PeftAdapter(adapter_config_json=config_json, adapter_safetensors=weights)
    t2 = stub.RegisterTask(pb.RegisterTaskRequest(name="py", peft=peft), metadata=auth)
    assert t2.version == 2 and list(t2.versions) == [1, 2], t2
    expect_code(lambda: stub.RegisterTask(pb.RegisterTaskRequest(
        name="py", peft=pb.PeftAdapter(adapter_config_json=b"{", adapter_safetensors=b"\x00")), metadata=auth),
        grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON")
    assert stub.GetTask(pb.GetTaskRequest(name="py", version=1)).version == 1
    called.add("GetTask")
    expect_code(lambda: stub.GetTask(pb.GetTaskRequest(name="nope")), grpc.StatusCode.NOT_FOUND, "nope")
    page = stub.ListTasks(pb.ListTasksRequest(page_size=10))
    assert [x.name for x in page.tasks] == ["py"] and page.next_page_token == "", page
    called.add("ListTasks")

    # Inference
    res = stub.Infer(pb.InferBatchRequest(requests=[
        pb.InferRequest(task="py", version=1, fields={"sentence": "good"}, max_new_tokens=2,
                        min_new_tokens=2, return_logprobs=True),
        pb.InferRequest(task="missing"),
        pb.InferRequest(task="py", version=1, fields={"sentence": "x"}, max_new_tokens=1,
                        sampling=pb.Sampling(random=pb.Sampling.Random(temperature=0.5, top_k=5, seed=7))),
    ]))
    kinds = [r.WhichOneof("outcome") for r in res.results]
    assert kinds == ["completion", "error", "completion"], kinds
    c0 = res.results[0].completion
    assert c0.finish_reason == pb.FINISH_REASON_LENGTH and c0.task_version == 1, c0
    assert [lp.token_id for lp in c0.logprobs] == list(c0.token_ids), c0
    assert res.results[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert res.results[2].completion.task_version == 1
    called.add("Infer")
    events = list(stub.InferStream(pb.InferRequest(task="py", version=1, fields={"sentence": "a b"},
                                                   max_new_tokens=2, min_new_tokens=2)))
    assert [e.WhichOneof("event") for e in events] == ["token", "token", "done"], events
    assert events[-1].done.task_version == 1
    called.add("InferStream")

    # Scoring: candidate answers ranked, and generation kept to allowed answers
    labels = ["positive", "negative", "neutral"]
    res = stub.Infer(pb.InferBatchRequest(requests=[
        pb.InferRequest(task="py", version=1, fields={"sentence": "good"}, choices=labels),
        pb.InferRequest(task="py", version=1, fields={"sentence": "good"}, allowed=labels),
    ]))
    scored, constrained = res.results[0].completion, res.results[1].completion
    assert scored.finish_reason == pb.FINISH_REASON_CHOICE, scored
    assert [c.text for c in scored.choices] == labels, scored
    assert abs(sum(c.probability for c in scored.choices) - 1) < 1e-6, scored
    assert scored.text == max(scored.choices, key=lambda c: c.logprob).text, scored
    assert constrained.finish_reason == pb.FINISH_REASON_CHOICE and constrained.text in labels, constrained

    # Training
    from google.protobuf import struct_pb2
    recs = []
    for sentence, label in [("good film", "positive"), ("bad film", "negative"), ("fine", "positive")]:
        rec = struct_pb2.Struct()
        rec.update({"taskname": "sentiment", "sentence": sentence, "label": label})
        recs.append(rec)
    cfg = pb.TrainConfig(name="run", new_tasks=["sentiment"], task_templates=[
        pb.TaskTemplate(taskname="sentiment", prompt_template=template.prompt_template,
                        prompt_template_fields=["sentence", "label"], total_virtual_tokens=2,
                        virtual_token_splits=[2], answer_field="label")],
        virtual_prompt_style=pb.VIRTUAL_PROMPT_STYLE_PROMPT_TUNING, max_epochs=1, max_steps=2,
        global_batch_size=1, micro_batch_size=1, val_check_interval=2, log_every_n_steps=1,
        prompt_tuning=pb.PromptTuningOptions(init_method=pb.PromptTuningOptions.INIT_METHOD_TEXT,
                                             init_text="sentiment"),
        optim=pb.Optimizer(lr=0.01),
        train_ds=pb.Dataset(records=recs), validation_ds=pb.Dataset(records=recs[:1]))
    evs = list(stub.Train(pb.TrainRequest(config=cfg), metadata=auth))
    kinds = [e.WhichOneof("event") for e in evs]
    assert kinds == ["queued", "started", "step", "step", "validation", "checkpoint", "checkpoint", "completed"], kinds
    assert [e.sequence for e in evs] == list(range(1, 9))
    assert "loss" in evs[4].validation.metrics["sentiment"].values
    assert [(w.task, w.version) for w in evs[-1].completed.written] == [("sentiment", 1)]
    called.add("Train")
    job_id = evs[0].job_id
    rest = list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_sequence=6)))
    assert [e.sequence for e in rest] == [7, 8], rest
    called.add("WatchJob")
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id))
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.last_sequence == 8, job
    assert (job.step, job.total_steps, job.total_epochs) == (2, 2, 1), job
    called.add("GetJob")

    long_cfg = pb.TrainConfig()
    long_cfg.CopyFrom(cfg)
    long_cfg.name = "long"
    long_cfg.max_steps = 100000
    long_cfg.max_epochs = 100000
    held = stub.Train(pb.TrainRequest(config=long_cfg), metadata=auth)
    first = [next(held), next(held)]
    assert [e.WhichOneof("event") for e in first] == ["queued", "started"]
    expect_code(lambda: stub.CancelJob(pb.CancelJobRequest(job_id=first[0].job_id)), grpc.StatusCode.UNAUTHENTICATED)
    cancelled = stub.CancelJob(pb.CancelJobRequest(job_id=first[0].job_id), metadata=auth)
    assert cancelled.state in (pb.JOB_STATE_CANCELLING, pb.JOB_STATE_CANCELLED), cancelled
    assert [e.WhichOneof("event") for e in held][-1] == "cancelled"
    assert stub.GetJob(pb.GetJobRequest(job_id=first[0].job_id)).state == pb.JOB_STATE_CANCELLED
    called.add("CancelJob")
    # Evaluation: a job on the same queue, its result kept with the version
    from google.protobuf import struct_pb2 as _s
    ev_recs = []
    for sentence, label in [("good film", "positive"), ("bad film", "negative"), ("so so", "neutral")]:
        rec = _s.Struct()
        rec.update({"taskname": "py", "sentence": sentence, "label": label})
        ev_recs.append(rec)
    ev_req = pb.EvaluateRequest(task="py", version=1, data=pb.Dataset(records=ev_recs),
                                labels=labels, max_new_tokens=2)
    expect_code(lambda: list(stub.Evaluate(ev_req)), grpc.StatusCode.UNAUTHENTICATED)
    evs = list(stub.Evaluate(ev_req, metadata=auth))
    kinds = [e.WhichOneof("event") for e in evs]
    assert kinds[0] == "queued" and "evaluating" in kinds and kinds[-1] == "completed", kinds
    result = evs[-1].completed.evaluation
    assert result.examples == 3 and list(result.labels) == labels, result
    assert sum(sum(r.predicted) for r in result.confusion) == 3, result
    assert "choice_accuracy" in result.metrics and "ece" in result.metrics, result
    assert stub.GetJob(pb.GetJobRequest(job_id=evs[0].job_id)).kind == pb.JOB_KIND_EVALUATE
    kept = stub.GetTask(pb.GetTaskRequest(name="py", version=1)).evaluations
    assert [e.id for e in kept] == [evs[0].job_id], kept
    called.add("Evaluate")

    jobs = stub.ListJobs(pb.ListJobsRequest())
    assert len(jobs.jobs) == 3, jobs
    called.add("ListJobs")

    deleted = stub.DeleteTask(pb.DeleteTaskRequest(name="py"), metadata=auth)
    assert list(deleted.versions_deleted) == [1, 2]
    called.add("DeleteTask")

    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["PromptLearning"].methods}
    assert called == methods, f"not called: {methods - called}"
    print(f"python grpcio {grpc.__version__}: {len(called)} RPCs OK")


if __name__ == "__main__":
    main()
