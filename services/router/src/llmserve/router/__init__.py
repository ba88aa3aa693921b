"""llmserve router: the public gRPC (and REST) front door; owns each request until its last token."""
