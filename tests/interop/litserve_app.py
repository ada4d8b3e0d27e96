"""Run by the interop venv's Python: a LitServe server with LitServe's own OpenAI spec and a tiny model of
its own that yields words one by one (so answers stream as server-sent events).

    python litserve_app.py PORT

A message ``gate:PATH`` makes the model yield one word, then wait until the file PATH exists before the
rest: a test sees the first event arrive while the model is still generating.
"""

import os
import sys
import time

import litserve as ls
from litserve.specs import OpenAISpec

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]


class Words(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.words = WORDS

    def predict(self, request, context):  # type: ignore[no-untyped-def]
        text = request.messages[-1].content if request.messages else ""
        if text.startswith("gate:"):
            yield "waiting "
            deadline = time.monotonic() + 30
            while not os.path.exists(text[5:]) and time.monotonic() < deadline:
                time.sleep(0.005)
            yield "released"
            return
        for i in range(len(text.split()) + 2):
            yield self.words[i % len(self.words)] + " "


if __name__ == "__main__":
    server = ls.LitServer(Words(spec=OpenAISpec()), accelerator="cpu")
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False)
