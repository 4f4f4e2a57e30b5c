"""Encoders in TF-Hub format: the BERT preprocessor/encoder pair and the offline converter.

`bert_convert.build_encoder_pair` turns a BERT safetensors folder into the two SavedModels.
"""
