"""The wrapper against an in-process fake service (grpcio's server with the generated servicer):
what goes out on the wire (auth metadata, request ids, requests built from dicts), how errors come
back (the code and the server's message naming the field; local checks naming theirs), and how
train_and_wait follows a job across a dropped connection.

    python -m unittest discover -s client/python/tests     (with the package installed)

test/python_client_test.ts runs it with the package pip-installed into a fresh venv; the example
is tested against the real service there.
"""
import os
import threading
import unittest
from concurrent import futures

import grpc

import promptlearning
from promptlearning import (InferItemError, JobEndedError, PromptLearningClient,
                            PromptLearningError, dataset, pb, pb_grpc)


def event(seq, kind, **fields):
    e = pb.TrainEvent(sequence=seq, job_id="job-1")
    getattr(e, kind).SetInParent()
    for k, v in fields.items():
        setattr(getattr(e, kind), k, v)
    return e


JOB = [event(1, "queued"), event(2, "started", total_steps=2),
       event(3, "step", step=1, total_steps=2, loss=1.5), event(4, "step", step=2, total_steps=2),
       event(5, "completed", steps=2)]


class FakeService(pb_grpc.PromptLearningServicer):
    """Records each call's metadata and request; answers as the test sets it up."""

    def __init__(self):
        self.calls = []  # (method, request, {metadata})
        self.train_events = JOB
        self.drop_train_after = None  # the next Train call fails UNAVAILABLE after this many events
        self.lock = threading.Lock()

    def _record(self, method, request, context):
        with self.lock:
            self.calls.append((method, request, dict(context.invocation_metadata())))

    def GetJob(self, request, context):
        self._record("GetJob", request, context)
        if request.job_id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "job missing not found")
        return pb.Job(job_id=request.job_id, state=pb.JOB_STATE_SUCCEEDED)

    def Train(self, request, context):
        self._record("Train", request, context)
        if request.config.max_steps == 0 and request.WhichOneof("source") == "config":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "config.max_steps must be positive: got 0")
        for i, e in enumerate(self.train_events):
            if self.drop_train_after is not None and i == self.drop_train_after:
                self.drop_train_after = None
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped")
            yield e

    def WatchJob(self, request, context):
        self._record("WatchJob", request, context)
        for e in self.train_events:
            if e.sequence > request.after_sequence:
                yield e

    def Infer(self, request, context):
        self._record("Infer", request, context)
        results = []
        for r in request.requests:
            if r.task == "missing":
                results.append(pb.InferResult(error=pb.ItemError(
                    code=grpc.StatusCode.NOT_FOUND.value[0], message="task missing not found")))
            else:
                results.append(pb.InferResult(completion=pb.Completion(text=" positive")))
        return pb.InferBatchResponse(results=results)

    def RegisterTask(self, request, context):
        self._record("RegisterTask", request, context)
        return pb.Task(name=request.name, version=1, total_virtual_tokens=request.table.rows)


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.service = FakeService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_PromptLearningServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.client = PromptLearningClient(f"127.0.0.1:{self.port}", token="s3cret")

    def tearDown(self):
        self.client.close()
        self.server.stop(None)

    def metadata(self, method):
        return [md for m, _, md in self.service.calls if m == method]

    def test_package_is_installed_not_the_source_tree(self):
        source = os.environ.get("PROMPTLEARNING_SOURCE")
        if source:
            self.assertFalse(os.path.realpath(promptlearning.__file__).startswith(
                os.path.realpath(source)), promptlearning.__file__)

    def test_token_goes_out_as_bearer_metadata_on_unary_and_streaming_calls(self):
        self.client.get_job("job-1", metadata={"x-request-tag": "t1"})
        list(self.client.train({"config": {"max_steps": 2}}))
        [get] = self.metadata("GetJob")
        self.assertEqual(get["authorization"], "Bearer s3cret")
        self.assertEqual(get["x-request-tag"], "t1")
        self.assertEqual(self.metadata("Train")[0]["authorization"], "Bearer s3cret")

    def test_no_token_sends_no_authorization(self):
        with PromptLearningClient(f"127.0.0.1:{self.port}") as anonymous:
            anonymous.get_job("job-1")
        self.assertNotIn("authorization", self.metadata("GetJob")[0])

    def test_server_errors_carry_the_code_and_the_message_naming_the_field(self):
        with self.assertRaises(PromptLearningError) as caught:
            list(self.client.train(pb.TrainConfig(max_steps=0)))
        e = caught.exception
        self.assertEqual(e.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("config.max_steps", e.details)
        self.assertEqual(str(e),
                         "Train: INVALID_ARGUMENT: config.max_steps must be positive: got 0")
        with self.assertRaises(PromptLearningError) as caught:
            self.client.get_job("missing")
        self.assertEqual((caught.exception.method, caught.exception.code),
                         ("GetJob", grpc.StatusCode.NOT_FOUND))

    def test_malformed_requests_fail_before_sending_naming_the_field(self):
        with self.assertRaisesRegex(ValueError, 'no field named "max_step"'):
            self.client.train({"config": {"max_step": 2}})
        with self.assertRaisesRegex(TypeError, r"fields\['sentence'\] must be a str: got int 3"):
            self.client.infer_one("sentiment", {"sentence": 3})
        with self.assertRaisesRegex(TypeError, r"records\[1\]\['label'\] must be a str"):
            dataset([{"sentence": "a", "label": "x"}, {"sentence": "b", "label": 1}])
        with self.assertRaisesRegex(ValueError, r"table\[1\] has 1 values; table\[0\] has 2"):
            self.client.register_task("t", {"prompt_template": "<|VIRTUAL_PROMPT_0|> {x}"},
                                      table=[[0.1, 0.2], [0.3]])
        with self.assertRaisesRegex(ValueError, "requests\\[1\\]: .*no field named \"text\""):
            self.client.infer([{"task": "a"}, {"task": "b", "text": "x"}])
        with self.assertRaisesRegex(TypeError, "tls must be"):
            PromptLearningClient("127.0.0.1:1", tls=1)
        self.assertEqual(self.service.calls, [])

    def test_requests_from_dicts_and_keywords_reach_the_server_as_given(self):
        self.client.register_task("t", {"prompt_template": "<|VIRTUAL_PROMPT_0|> {x}",
                                        "total_virtual_tokens": 2}, table=[[0.5, 1], [2, 3]])
        [(_, reg, _)] = [c for c in self.service.calls if c[0] == "RegisterTask"]
        self.assertEqual((reg.table.rows, reg.table.hidden, list(reg.table.values)),
                         (2, 2, [0.5, 1, 2, 3]))
        self.assertEqual(reg.template.total_virtual_tokens, 2)
        self.client.infer_one("sentiment", {"sentence": "ok"}, version=2, temperature=0.5, seed=7,
                              choices=["positive", "negative"])
        [(_, batch, _)] = [c for c in self.service.calls if c[0] == "Infer"]
        [req] = batch.requests
        self.assertEqual((req.task, dict(req.fields), req.version, list(req.choices)),
                         ("sentiment", {"sentence": "ok"}, 2, ["positive", "negative"]))
        self.assertEqual((req.sampling.random.temperature, req.sampling.random.seed), (0.5, 7))

    def test_an_item_error_names_its_request_and_code(self):
        results = self.client.infer([{"task": "sentiment"}, {"task": "missing"}])
        self.assertEqual([r.WhichOneof("outcome") for r in results], ["completion", "error"])
        with self.assertRaises(InferItemError) as caught:
            self.client.infer_one("missing", {})
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("task missing not found", str(caught.exception))

    def test_train_and_wait_reports_each_event_once_and_returns_the_completed_one(self):
        seen = []
        done = self.client.train_and_wait(pb.TrainConfig(max_steps=2), on_event=seen.append)
        self.assertEqual([e.sequence for e in seen], [1, 2, 3, 4, 5])
        self.assertEqual((done.job_id, done.completed.steps), ("job-1", 2))
        [(_, req, _)] = [c for c in self.service.calls if c[0] == "Train"]
        self.assertTrue(req.request_id, "train_and_wait sends a request id so a retry is safe")

    def test_train_and_wait_resumes_with_watch_job_after_a_dropped_connection(self):
        self.service.drop_train_after = 3
        seen = []
        done = self.client.train_and_wait(pb.TrainConfig(max_steps=2), on_event=seen.append,
                                          reconnect_delay=0)
        self.assertEqual([e.sequence for e in seen], [1, 2, 3, 4, 5])
        self.assertEqual(done.WhichOneof("event"), "completed")
        [(_, watch, md)] = [c for c in self.service.calls if c[0] == "WatchJob"]
        self.assertEqual((watch.job_id, watch.after_sequence), ("job-1", 3))
        self.assertEqual(md["authorization"], "Bearer s3cret")

    def test_train_and_wait_retries_train_with_the_same_request_id_before_any_event(self):
        self.service.drop_train_after = 0
        done = self.client.train_and_wait(pb.TrainConfig(max_steps=2), request_id="rid-1",
                                          reconnect_delay=0)
        trains = [req.request_id for m, req, _ in self.service.calls if m == "Train"]
        self.assertEqual(trains, ["rid-1", "rid-1"])
        self.assertEqual(done.sequence, 5)

    def test_a_failed_job_raises_with_its_reason_and_code(self):
        self.service.train_events = JOB[:2] + [pb.TrainEvent(
            sequence=3, job_id="job-1",
            failed=pb.TrainEvent.Failed(reason="disk full", code=8))]
        with self.assertRaises(JobEndedError) as caught:
            self.client.train_and_wait(pb.TrainConfig(max_steps=2))
        e = caught.exception
        self.assertEqual((e.code, e.job_id), (grpc.StatusCode.RESOURCE_EXHAUSTED, "job-1"))
        self.assertIn("disk full", str(e))

    def test_a_stream_left_early_keeps_the_job_id_and_last_sequence(self):
        with self.client.train(pb.TrainConfig(max_steps=2)) as events:
            first = next(events)
            second = next(events)
        self.assertEqual((first.WhichOneof("event"), second.WhichOneof("event")),
                         ("queued", "started"))
        self.assertEqual((events.job_id, events.last_sequence), ("job-1", 2))


if __name__ == "__main__":
    unittest.main()
