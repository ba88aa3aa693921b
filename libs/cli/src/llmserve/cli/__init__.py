"""The llmserve command: a local cluster (`up`), a chat client (`chat`) and model admin (`models`)."""
