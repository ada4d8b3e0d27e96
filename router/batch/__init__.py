"""The batch lane: a durable buffer of records per model, flushed into batch runs."""
