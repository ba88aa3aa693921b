"""llmserve model worker: pulls jobs from JetStream, runs them on a model, streams tokens back."""
