"""Every kind of artifact the flows write, with its code version, in the order the pipeline makes
them. Bump a stage's version when the code changes what the stage writes (its keys change too).

TensorFlow-free on purpose: tasks compute artifact keys from these before deciding to compute, so
a run whose every task is cached never has to import TensorFlow.
"""

from __future__ import annotations

from penultimate.artifacts import Stage

# 2: splits stratified by label.
DATASET_STAGE = Stage("dataset", "2")
# 2: the encoder SavedModel carries `call_bfloat16`.
# 3: 2-D token matrix, fused QKV, MatMul + BiasAdd (+ GELU) that oneDNN fuses.
# 4: `encoder.json`; TF-Hub pairs imported too; the built-in preprocessor has the whole standard
#    interface (`tokenize.get_special_tokens_dict`, `bert_pack_inputs` for ragged rank 1 and 2).
# 5: layer norm in PyTorch's form, the erf GELU, unstacked Q/K/V, float32 QKV bias fused: forms
#    OpenVINO (`runtime: openvino`) and grappler fuse.
ENCODER_STAGE = Stage("encoder", "5")
# 2: one artifact per dataset shard and encoder, named vectors as Parquet columns plus token counts.
FEATURES_STAGE = Stage("features", "2")
# 2: classifier.json names its encoder artifact by key.
# 3: named `classifier` (was `model`); trained on per-shard features artifacts (named in the
#    metrics, not in the key).
# 4: confusion_matrix.png row-normalised and at most 1596 px a side; metrics name the top
#    confusions; TensorBoard logs in a run named after the config, with an hparams session.
# 5: class_weights auto = capped inverse square-root frequency; metrics per class, macro and
#    weighted F1 over every label; a warning when training stopped still improving.
# 6: a dropout report (dropout_report/) and an uncertainty report (uncertainty/) in every one.
# 7: the lexical branch (`lexical`, on by default): TF-IDF logits added, `lexical.json` saved.
CLASSIFIER_STAGE = Stage("classifier", "7")
# 2: `encode` also returns `penultimate`, so every choice comes from one encoder pass.
# 3: inputs packed through the standard `tokenize` + `bert_pack_inputs` (any TF-Hub preprocessor);
#    `seq_length` kept as a variable.
# 4: `predict_mc` also returns each text's predictive entropy and mutual information.
EXPORT_STAGE = Stage("export", "4")
# The SavedModel's folder inside an export artifact.
SAVED_MODEL_DIR = "saved_model"
# 2: made from features artifacts where the store has them; metrics count the texts encoded.
# 3: every passthrough column of the dataset shard (was `label` and `split` only).
EMBEDDING_SHARD_STAGE = Stage("embedding-shard", "3")
# 2: shards named by key, relative to the store.
EMBEDDINGS_STAGE = Stage("embeddings", "2")
# 2: distinctive terms by BERTopic's c-TF-IDF with frequent-word reduction, without link parts,
#    markup, contraction pieces and stop words; maps on stratified samples, map.html by plotly.
CLUSTERS_STAGE = Stage("clusters", "2")
# The per-shard cluster assignments (Parquet) inside a clusters artifact.
ASSIGNMENTS_DIR = "assignments"
# 2: row caps sample each label by its share.
PROBE_STAGE = Stage("probe", "2")

ALL_STAGES = (
    DATASET_STAGE,
    ENCODER_STAGE,
    FEATURES_STAGE,
    CLASSIFIER_STAGE,
    EXPORT_STAGE,
    EMBEDDING_SHARD_STAGE,
    EMBEDDINGS_STAGE,
    CLUSTERS_STAGE,
    PROBE_STAGE,
)
