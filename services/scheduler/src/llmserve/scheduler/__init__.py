"""llmserve scheduler: admits submissions, picks the model version, queues jobs on JetStream."""
