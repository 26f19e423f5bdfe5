"""Model composition: preprocess -> two models in parallel -> combine.

The ``Pipeline`` ingress holds handles to four deployments and wires each request
through them without awaiting the intermediate steps: the tokens from ``Preprocess`` go,
un-awaited, to both models at once, and their two pending results go to ``Combine``.

The slow model gets two replicas and the fast one a single replica; each replica takes one
request at a time (``max_ongoing_requests=1``), so under load the routers spread requests
over the replicas and queue the rest. The timings printed show both effects: one request
costs the slower model's time (the models run in parallel), and a burst of requests is
served faster than the same requests one after another.

Run it: ``python examples/model_composition.py``
"""

from __future__ import annotations

import os
import time
from typing import TypedDict

import trioserve as serve

POSITIVE = {"good", "great", "love", "fast", "happy"}
NEGATIVE = {"bad", "slow", "hate", "broken", "sad"}
TOPICS = {"trio": "python", "python": "python", "model": "ml", "replica": "ml"}


class Scored(TypedDict):
    value: str
    pid: int


class Result(TypedDict):
    sentiment: str
    topic: str
    sentiment_pid: int
    topic_pid: int


@serve.deployment
class Preprocess:
    def __call__(self, text: str) -> list[str]:
        return [word.strip(".,!?") for word in text.lower().split()]


@serve.deployment(num_replicas=2, max_ongoing_requests=1)
class SentimentModel:
    """The slow model: two replicas."""

    def __call__(self, tokens: list[str]) -> Scored:
        time.sleep(0.1)  # stands in for real inference work (runs on a worker thread)
        score = sum(t in POSITIVE for t in tokens) - sum(t in NEGATIVE for t in tokens)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"value": label, "pid": os.getpid()}


@serve.deployment(num_replicas=1, max_ongoing_requests=1)
class TopicModel:
    """The fast model: one replica."""

    def __call__(self, tokens: list[str]) -> Scored:
        time.sleep(0.05)
        topics = [TOPICS[t] for t in tokens if t in TOPICS]
        return {"value": topics[0] if topics else "other", "pid": os.getpid()}


@serve.deployment
class Combine:
    def __call__(self, sentiment: Scored, topic: Scored) -> Result:
        return {
            "sentiment": sentiment["value"],
            "topic": topic["value"],
            "sentiment_pid": sentiment["pid"],
            "topic_pid": topic["pid"],
        }


@serve.deployment(max_ongoing_requests=16)
class Pipeline:
    def __init__(
        self,
        preprocess: serve.DeploymentHandle,
        sentiment: serve.DeploymentHandle,
        topic: serve.DeploymentHandle,
        combine: serve.DeploymentHandle,
    ) -> None:
        self.preprocess = preprocess
        self.sentiment = sentiment
        self.topic = topic
        self.combine = combine

    async def __call__(self, text: str) -> Result:
        tokens = self.preprocess.remote(text)
        # Both models wait for the tokens, then run at the same time.
        sentiment = self.sentiment.remote(tokens)
        topic = self.topic.remote(tokens)
        result: Result = await self.combine.remote(sentiment, topic)
        return result


TEXTS = [
    "I love Trio, it is great",
    "the replica is slow and broken",
    "a model on a replica",
    "python is good",
    "bad day",
    "nothing to see here",
    "happy replica, happy model",
    "I hate slow Python builds",
]
EXPECTED = [
    ("positive", "python"),
    ("negative", "ml"),
    ("neutral", "ml"),
    ("positive", "python"),
    ("negative", "other"),
    ("neutral", "other"),
    ("positive", "ml"),
    ("negative", "python"),
]


def main() -> None:
    serve.start(http_port=None)
    try:
        started = time.perf_counter()
        app = Pipeline.bind(
            Preprocess.bind(), SentimentModel.bind(), TopicModel.bind(), Combine.bind()
        )
        handle = serve.run(app)
        deployed = time.perf_counter() - started
        print(f"deployed 5 deployments (6 replica processes) in {deployed:.2f}s")

        started = time.perf_counter()
        first = handle.remote(TEXTS[0]).result()
        one = time.perf_counter() - started
        labels = f"{first['sentiment']}, {first['topic']}"
        print(f"one request:  {one * 1000:4.0f} ms  {TEXTS[0]!r} -> {labels}")

        started = time.perf_counter()
        sequential = [handle.remote(text).result() for text in TEXTS]
        seq = time.perf_counter() - started
        print(f"{len(TEXTS)} requests, one after another: {seq * 1000:4.0f} ms")

        started = time.perf_counter()
        burst = serve.get([handle.remote(text) for text in TEXTS])
        par = time.perf_counter() - started
        print(f"{len(TEXTS)} requests at once:         {par * 1000:4.0f} ms ({seq / par:.1f}x)")

        for text, result in zip(TEXTS, burst, strict=True):
            print(f"  {text!r:32} -> {result['sentiment']:8} {result['topic']}")
        assert [(r["sentiment"], r["topic"]) for r in burst] == EXPECTED
        assert [(r["sentiment"], r["topic"]) for r in sequential] == EXPECTED

        sentiment_pids = {r["sentiment_pid"] for r in burst}
        topic_pids = {r["topic_pid"] for r in burst}
        print(
            f"replicas used in the burst: SentimentModel {len(sentiment_pids)}, "
            f"TopicModel {len(topic_pids)}"
        )
        assert len(sentiment_pids) == 2
        assert len(topic_pids) == 1
    finally:
        serve.shutdown()
    print(f"model composition: {len(TEXTS)} texts classified through 5 deployments")


if __name__ == "__main__":
    main()
