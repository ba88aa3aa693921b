"""Code shared by every llmserve service: settings, logging, NATS subjects, Redis keys, errors."""
