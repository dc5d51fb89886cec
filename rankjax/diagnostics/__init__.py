"""Diagnostics of the token weightings on a trained model.

`noise`: the paper's noise diagnostic (its Table 1): noise tokens injected into SFT responses, every supervised
token scored, and how many noise tokens each weighting family puts in its top 10% (`run_noise_diagnostic`;
`python -m rankjax.diagnostics.noise`). Its parts: `noise_data` (records -> token ids), `noise_injection`,
`token_scores` (teacher-forced statistics), `families` (each family's score), `noise_metrics`, `noise_report`.
Nothing else in the package imports this one: it sits beside `rankjax.train` and `rankjax.eval`.
"""
