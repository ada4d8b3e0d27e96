"""What ``inference-router demo`` prints: the README's Quick start, command for command (tests/test_readme.py
holds the two together and runs them against a live demo)."""

from __future__ import annotations

from dataclasses import dataclass

ROW = "120.5,2,0.8,350,7,30"  # amount,hour,merchant_risk,distance_km,tx_last_24h,card_age_days
RISKY = "4999.0,3,0.95,4200,31,2"
INVOKE = "{base}/endpoints/fraud/invocations"


@dataclass(frozen=True)
class Example:
    says: str  # what it shows, printed before it
    commands: tuple[str, ...]  # shell lines; "{base}" is localhost:PORT, a trailing backslash continues a line


EXAMPLES: tuple[Example, ...] = (
    Example("score a transaction (CSV columns: amount,hour,merchant_risk,distance_km,tx_last_24h,card_age_days)", (
        f"curl -s -i -X POST {INVOKE} -H 'Content-Type: text/csv' \\",
        f"     --data '{ROW}'",
    )),
    Example("JSON, and a team's API key that may claim critical urgency", (
        f"curl -s -X POST {INVOKE} -H 'Content-Type: application/json' \\",
        "     -H 'X-Api-Key: demo-team-a-key' -H 'X-Urgency: critical' \\",
        f"     --data '{{\"instances\": [[{ROW}], [25,14,0.05,3,2,1500]]}}'",
    )),
    Example("a deadline the cold serverless lane cannot meet is kept on real-time", (
        f"curl -s -i -X POST {INVOKE} -H 'Content-Type: text/csv' \\",
        f"     -H 'X-Deadline-Ms: 500' --data '{ROW}'",
    )),
    Example("a burst beyond the 12 sync slots waits for free slots (most urgent first) instead of failing", (
        "seq 100 | xargs -P 50 -I{} curl -s -o /dev/null -w '%{http_code}\\n' -X POST \\",
        f"     {INVOKE} -H 'Content-Type: text/csv' -H 'X-Urgency: high' \\",
        f"     --data '{ROW}' | sort | uniq -c",
    )),
    Example("a 7 MB CSV from a client that accepts a 202 (Prefer: respond-async) becomes a job on the async lane", (
        f"python3 -c \"print('\\n'.join(['{ROW}'] * 340000))\" > big.csv",
        f"curl -s -D - -o job.json -X POST {INVOKE} -H 'Content-Type: text/csv' \\",
        "     -H 'Prefer: respond-async' --data-binary @big.csv",
        "job=$(python3 -c 'import json; print(json.load(open(\"job.json\"))[\"job_id\"])')",
        "while [ \"$(curl -s -o /dev/null -w '%{http_code}' {base}/jobs/$job/result)\" = 202 ]; do sleep 1; done",
        "curl -s {base}/jobs/$job",
        "curl -s {base}/jobs/$job/result | wc -l",
    )),
    Example("low urgency from such a client goes to the batch lane: one score per record, in input order; with "
            "wait=10 the answer is the result once the batch ran (flushed within 2 s)", (
        f"printf '{ROW}\\n{RISKY}\\n' > batch.csv",
        f"curl -s -i -X POST {INVOKE} -H 'Content-Type: text/csv' \\",
        "     -H 'X-Urgency: low' -H 'Prefer: respond-async, wait=10' --data-binary @batch.csv",
    )),
    Example("KServe V2 and TorchServe clients keep their URLs", (
        "curl -s -X POST {base}/v2/models/fraud/infer -H 'Content-Type: application/json' \\",
        f"     --data '{{\"instances\": [[{ROW}]]}}'",
    )),
    Example("why would a request go where it goes? (no backend is called)", (
        "curl -s -X POST {base}/admin/explain -H 'Authorization: Bearer demo-admin-token' \\",
        "     --data '{\"model\": \"fraud\", \"headers\": {\"X-Urgency\": \"low\", \"X-Deadline-Ms\": \"500\"}, "
        "\"bytes\": \"100\", \"state\": {\"serverless\": {\"cold\": true}}}' | python3 -m json.tool",
    )),
)

