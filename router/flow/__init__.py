"""Flow control: admission queues, concurrency limits that tune themselves, breakers and retry budgets.

Each piece is a small object fed by the sync lane and the tracker, with an injected clock, so the
simulator can run the same code on a virtual clock.
"""
