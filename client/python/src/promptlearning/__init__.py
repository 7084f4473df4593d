"""Python client for promptlearning.v1.PromptLearning: prompt tuning and p-tuning of a frozen
GPT-2, a registry of the tuned tasks, and batched inference mixing them.

``PromptLearningClient`` wraps the generated stub (``promptlearning.v1.prompt_learning_pb2_grpc``);
``pb`` is the generated message module (``promptlearning.v1.prompt_learning_pb2``).
"""
from .client import (
    DEFAULT_ADDRESS,
    InferItemError,
    JobEndedError,
    JobStream,
    Metadata,
    PromptLearningClient,
    PromptLearningError,
    Stream,
    TrainInput,
    dataset,
    describe_event,
    infer_request,
    progress_line,
)
from .v1 import prompt_learning_pb2 as pb
from .v1 import prompt_learning_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_ADDRESS", "InferItemError", "JobEndedError", "JobStream", "Metadata",
    "PromptLearningClient", "PromptLearningError", "Stream", "TrainInput", "dataset",
    "describe_event", "infer_request", "pb", "pb_grpc", "progress_line",
]
