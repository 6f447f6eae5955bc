"""Reuse of a pretrained teacher: embed, probe, zero-shot, fine-tune (issue 15); see README "Reuse"."""
