"""Run inside a virtual environment with only torch, transformers, safetensors and pillow: load an
export folder through the Auto classes and the pipeline, print what they generate as JSON."""

import json
import sys

import numpy as np
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, pipeline

folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
images = [Image.fromarray((np.random.RandomState(seed).rand(40, 40, 3) * 255).astype("uint8")) for seed in range(2)]
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare image 1 and image 2."}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=prompt, images=images)
prompt_length = inputs["input_ids"].shape[1]
greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, prompt_length:].tolist()
eos = processor.tokenizer.eos_token_id
greedy = greedy[: greedy.index(eos)] if eos in greedy else greedy
beams = model.generate(**inputs, max_new_tokens=4, num_beams=2, do_sample=False)
stop = processor.tokenizer.decode(greedy[1:3])
stopped = model.generate(**inputs, max_new_tokens=8, do_sample=False, stop_strings=[stop], tokenizer=processor.tokenizer)
causal_lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
piped = pipe(text=prompt, images=images, max_new_tokens=8, do_sample=False, return_full_text=False)
print(json.dumps({
    "modules": sorted(name for name in sys.modules if name.split(".")[0] in ("dsvl_exp", "deepspeed", "hydra", "peft")),
    "greedy": greedy,
    "greedy_text": processor.decode(greedy, skip_special_tokens=True),
    "beam_shape": list(beams.shape),
    "prompt_length": prompt_length,
    "stopped": stopped[0, prompt_length:].tolist(),
    "causal_lm": type(causal_lm).__name__,
    "pipeline_text": piped[0]["generated_text"],
}))
