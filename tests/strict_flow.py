"""A short TS-LoRA workflow (fit, save, load, generate) that prints its results as JSON: run by
tests/test_strict_backend.py on NumPy and on each device backend (MINITSPEFT_BACKEND), which must agree."""

import json
import tempfile

import numpy as np

import minitspeft as mt
from minitspeft import nn
from minitspeft.peft import GateConfig, LoraConfig, PeftModel, get_peft_model
from minitspeft.train import fit


def lm():
    mt.manual_seed(0)
    return nn.Transformer(nn.TransformerConfig.preset("nano", vocab_size=7, block_size=12, causal=True))


seqs = (np.arange(7)[:, None] + np.arange(13)) % 7
model = get_peft_model(lm(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), gate=GateConfig())
fit(model, seqs[:, :-1], seqs[:, 1:], steps=6, batch_size=7, lr=1e-2, progress=False)
out = {"backend": mt.get_backend()}
with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    again = PeftModel.from_pretrained(lm(), d)
logits = again(seqs[:2, :-1])
out["logits"] = mt.to_numpy(logits.data).astype(float).ravel()[:20].tolist()
out["taus"] = [float(t.item()) for t in model.thresholds()]
out["generated"] = mt.to_numpy(again.generate(np.array([[3]]), max_new_tokens=5, top_k=1)).tolist()  # adapted, gated
print(json.dumps(out))
