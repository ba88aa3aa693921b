"""llmserve registry: publishes model versions into the store and serves the records over gRPC."""
