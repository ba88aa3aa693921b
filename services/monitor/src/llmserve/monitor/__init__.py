"""llmserve monitor: watches heartbeats and announces instances that come up or die."""
