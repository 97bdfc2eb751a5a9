"""`trtllm-compile bench`: output tokens/s, time to first token and time per output token of our engine against
Hugging Face eager `generate` and HF static cache + `torch.compile`, in one process on the same weights."""
