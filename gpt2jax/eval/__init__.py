"""Zero-shot evaluation: the GPT-2 paper's Table 3 protocols and lm-evaluation-harness's, each named in the output.

Modules: `windows` (sliding-window bookkeeping shared with training's validation), `detokenizers`, `protocols`,
`tasks` (registry), `scoring` (the jitted scorer), `zeroshot` (CLI: `python -m gpt2jax.eval.zeroshot --help`),
`harness` (an lm-evaluation-harness backend; the only module that imports lm_eval, an optional extra).
"""
