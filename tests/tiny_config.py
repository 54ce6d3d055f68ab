"""Overrides that make the ASR stage a few seconds' work, for end-to-end tests through the entry
points: the models learn nothing, which is fine where the plumbing is under test."""

TINY_ASR = [
    "asr.model_config.hidden_size=32", "asr.model_config.num_hidden_layers=2",
    "asr.model_config.num_attention_heads=2", "asr.model_config.intermediate_size=64",
    "asr.model_config.conv_dim=[16,16,32,32]", "asr.model_config.num_conv_pos_embeddings=16",
    "asr.model_config.num_conv_pos_embedding_groups=4",
    "asr.warmup_steps=1", "asr.max_train_minutes=null",
]

# The retraining and erasure jobs on a handful of accounts: seconds per job.
TINY_JOB = [
    *TINY_ASR, "asr.max_batch_seconds=12", "asr.max_steps=2", "asr.eval_every=2",
    "nlu=tiny", "nlu.epochs=1", "nlu.cpu_threads=1", "trainer.log_every=1",
    "data.split.validation=0.25", "data.split.test=0.25", "data.num_proc=1",
]

# The NLU heads of conf/nlu/tiny.yaml, for tests that build a model without the config.
def tiny_head():  # a function, so importing this module does not import the NLU package
    from pipeline.nlu.config import HeadConfig

    return HeadConfig(intent_pooling="mean", tag_loss_weight=1.0, label_smoothing=0.0, head_dropout=0.1)
