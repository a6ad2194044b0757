"""The whole pipeline as cached stages: pretrain, prompts, distill, search, calibrate, export, eval."""
