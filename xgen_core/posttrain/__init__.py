"""Post-training (paper section 4): SFT, DPO and GRPO objectives on our own train step, and the reward registry."""
