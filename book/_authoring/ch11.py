import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Paper → code → test: an index

Every formula, trick and table of the paper, with the `m3ref` function that computes it, the
chapter that explains it, and the tests that check it. The table is not typed by hand. The
code below looks up every function in the package and every test in `tests/`, and fails if
one is missing, so the index cannot drift from the code.
"""),
code(r"""
import ast
import importlib
import pathlib

from IPython.display import Markdown

from m3ref.book import quiet

quiet()  # no progress-bar warnings from the modules imported below

ROOT = pathlib.Path("..").resolve()
TESTS = {}
for path in sorted((ROOT / "tests").glob("test_*.py")):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            TESTS[node.name] = path.name
CHAPTERS = {p.stem: p for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb")}

def obj(path):
    # the object at a dotted path: module.function or module.Class.method
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:  # module.Class.method
        module, _, cls = module.rpartition(".")
        return getattr(getattr(importlib.import_module(module), cls), name)

assert TESTS and CHAPTERS  # counts change with every new test or chapter, so they are not printed
"""),
code(r"""
# (what, paper, m3ref object, chapter, tests)
INDEX = [
    ("Dense score s_dense = <e_q, e_p>", "Sec. 3.2", "m3ref.scores.s_dense", "01_dense",
     ["test_s_dense_is_the_inner_product", "test_encode_matches"]),
    ("Dense embedding: normalised [CLS] state", "Sec. 3.2", "m3ref.model.M3Model.forward", "01_dense",
     ["test_encode_types_shapes_and_input_order", "test_encode_matches"]),
    ("Term weights w_t = ReLU(W_lex^T H[i]), max over repeats", "Sec. 3.2", "m3ref.scores.term_weight_vectors", "02_lexical",
     ["test_term_weights_keep_the_max_and_drop_special_ids", "test_encode_matches"]),
    ("Lexical score s_lex (one pair)", "Sec. 3.2", "m3ref.scores.lexical_match", "02_lexical",
     ["test_lexical_match_sums_shared_terms_only", "test_lexical_matching_score_matches"]),
    ("Lexical score s_lex, batched in id space (no (B, L, V) tensor)", "Sec. 3.2", "m3ref.scores.s_lex", "02_lexical",
     ["test_s_lex_hand_example", "test_s_lex_in_id_space_equals_the_vocabulary_formula_with_gradients"]),
    ("Multi-vector score s_mul (late interaction)", "Sec. 3.2", "m3ref.scores.s_mul", "03_multivector",
     ["test_s_mul_hand_example_and_the_padding_switch", "test_s_mul_batched_equals_pairwise_on_random_inputs",
      "test_default_colbert_is_the_definition_which_is_the_official_per_pair_scorer"]),
    ("s_mul over candidates stored without padding (re-ranking)", "Sec. 3.2", "m3ref.scores.s_mul_packed", "03_multivector",
     ["test_s_mul_packed_equals_s_mul_with_masks", "test_mul_scores_chunking_is_invisible"]),
    ("Hybrid rank score s_rank / s_inter", "Sec. 3.2, 3.3", "m3ref.scores.s_inter", "04_hybrid",
     ["test_s_inter_and_weighted_average", "test_all_equals_weighted_formula"]),
    ("Official compute_score combinations", "(official code)", "m3ref.model.M3Model.compute_score", "04_hybrid",
     ["test_compute_score_matches_with_the_official_colbert_switch", "test_compute_score_single_pair_batch_and_weights"]),
    ("InfoNCE L_s over in-batch negatives, group layout", "Sec. 3.3", "m3ref.losses.info_nce", "05_contrastive",
     ["test_info_nce_by_hand", "test_group_targets_point_at_each_positive"]),
    ("L = (l1 L_dense + l2 L_lex + l3 L_mul + L_inter) / 4", "Sec. 3.3", "m3ref.losses.loss_L", "05_contrastive",
     ["test_combinations_for_both_presets", "test_training_loss_matches_the_official_training_model"]),
    ("Teacher-score distillation (m3_kd_loss, kl_div)", "(official code)", "m3ref.losses.teacher_kd_loss", "05_contrastive",
     ["test_m3_kd_loss_by_hand", "test_training_loss_matches_the_official_training_model"]),
    ("Self-distillation L'_* with teacher softmax(s_inter)", "Sec. 3.3", "m3ref.losses.self_distill_loss", "06_self_distillation",
     ["test_self_distillation_by_hand_and_teacher_is_detached"]),
    ("L' and L_final = (L + L') / 2; paper vs official presets", "Sec. 3.3", "m3ref.losses.m3_loss", "06_self_distillation",
     ["test_m3_loss_switches_self_distillation_on_after_the_start_step",
      "test_official_preset_differs_from_paper_preset_only_in_l_prime"]),
    ("All scores and losses of one batch", "Sec. 3.3", "m3ref.model.M3Model.training_loss", "05_contrastive",
     ["test_training_loss_shapes_gradients_and_group_errors", "test_training_loss_matches_the_official_training_model"]),
    ("Training data: official JSONL schema, file:line errors", "Sec. 3.1", "m3ref.data.load_train_data", "07_data_and_stages",
     ["test_train_samples", "test_bad_training_line_names_file_and_line"]),
    ("Group sampling: one positive, G-1 negatives", "App. A (official code)", "m3ref.data.sample_group", "07_data_and_stages",
     ["test_sample_group_official_rules"]),
    ("ANCE hard-negative mining", "Sec. 3.4", "m3ref.retrieval.mine_hard_negatives", "07_data_and_stages",
     ["test_mine_hard_negatives", "test_mine_writes_nothing_on_error"]),
    ("Multi-stage training (dense-only stage, then unified)", "Sec. 3.4", "m3ref.train.train", "07_data_and_stages",
     ["test_log_lines_and_resume_equals_uninterrupted"]),
    ("Length-grouped batches, one shared seed across ranks", "Sec. 3.4, Table 9", "m3ref.batching.BucketSampler", "08_efficient_batching",
     ["test_sampler_same_bucket_disjoint_ranks_full_coverage", "test_sampler_state_resumes_exactly_across_epochs"]),
    ("Sub-batches with gradient checkpointing", "Sec. 3.4, Table 10", "m3ref.batching.encode", "08_efficient_batching",
     ["test_split_batch_with_checkpointing_equals_full_batch", "test_split_batch_sorts_by_length_and_keeps_input_order",
      "test_max_batch_split_batch_fits_more_passages"]),
    ("Cross-device negatives", "Sec. 3.4", "m3ref.distributed.m3_loss_across_ranks", "09_multi_gpu",
     ["test_two_ranks_equal_one_process_with_the_whole_batch", "test_official_dense_cross_device_keeps_other_modes_local"]),
    ("torchrun training end to end, checkpoints in the official layout", "Sec. 3.4", "m3ref.train.main", "09_multi_gpu",
     ["test_torchrun_two_ranks_end_to_end", "test_interrupted_checkpoint_write_keeps_the_previous_one"]),
    ("MCLS: multiple [CLS] for long documents", "App. B.2", "m3ref.model.M3Model.tokenize", "10_mcls",
     ["test_mcls_reduces_to_cls_for_short_texts_and_matches_a_reference"]),
    ("Retrieval: dense top-k, inverted sparse index, re-ranking, hybrid", "Sec. 4", "m3ref.retrieval.search_all", "04_hybrid",
     ["test_sparse_index_equals_lexical_match", "test_dense_sparse_union_and_formula", "test_multivec_reranks_dense_top_k"]),
    ("nDCG@k, Recall@k as trec_eval computes them", "Sec. 4", "m3ref.metrics.evaluate", "12_experiments",
     ["test_ndcg_binary", "test_missing_query_counts_as_zero", "test_graded_relevance_uses_linear_gain"]),
    ("Evaluation on MIRACL / MKQA / MLDR layouts", "Sec. 4.1-4.3", "m3ref.evaluate.evaluate_model", "12_experiments",
     ["test_evaluate_cli_end_to_end", "test_load_eval_samples"]),
    ("Checkpoints in the official BGE-M3 layout, both directions", "(official code)", "m3ref.model.M3Model.save_pretrained", "00_overview",
     ["test_a_checkpoint_saved_by_m3ref_loads_in_flagembedding", "test_save_and_load_round_trip"]),
]

missing = []
for what, paper, path, chapter, tests in INDEX:
    try:
        obj(path)
    except (ImportError, AttributeError):
        missing.append(path)
    missing += [t for t in tests if t not in TESTS]
    if chapter not in CHAPTERS:
        missing.append(chapter)
assert not missing, f"the index names things that do not exist: {missing}"

rows = ["| What | Paper | `m3ref` | Chapter | Tests |", "|---|---|---|---|---|"]
for what, paper, path, chapter, tests in INDEX:
    tests_md = "<br>".join(f"`{TESTS[t]}::{t}`" for t in tests)
    rows.append(f"| {what} | {paper} | `{path.removeprefix('m3ref.')}` | {chapter} | {tests_md} |")
print(len(INDEX), "entries, all found")
Markdown("\n".join(rows))
"""),
md(r"""
## What is not here

* **RetroMAE pre-training** (paper Sec. 3.4, the first stage) is not implemented. It is a
  separate method (masked auto-encoding), and BGE-M3 starts from its result. Our tiny model
  starts from random weights (chapter 7).
* **The paper's data.** The 1.2B unsupervised pairs, the fine-tuning sets and the real MIRACL,
  MKQA and MLDR sets are not shipped. `m3ref.data` loads the real ones from the hub when it is
  reachable. `data_samples/` stands in for them, in the same layouts.

## Summary

* Each paper formula is one named function, explained in one chapter and checked by named tests.
* The index is computed. Renaming a function or a test without updating it fails this chapter under `pytest --nbval`.

## Exercises

1. Pick one row of the index, open its test, and change the package function so that the test fails. Which other tests fail with it?
2. The paper's hybrid score and the official `compute_score` combine the same three scores. Which two rows of the index cover them, and what do their tests compare against?

```{admonition} Solutions
:class: dropdown

1. For example, make `s_mul` take its max over padding by default. The hand example in `test_scores.py` fails, and so does the parity test `test_default_colbert_is_the_definition_which_is_the_official_per_pair_scorer`.
2. "Hybrid rank score s_rank / s_inter" (`scores.s_inter`, checked against the formula) and "Official compute_score combinations" (`M3Model.compute_score`, checked against FlagEmbedding's `compute_score` on the same weights).
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "11_index.ipynb"), cells)
