"""The tiny models' chat markup: special tokens, BOS/EOS and chat template, one per family.

Mixtral and Mistral use Mistral-Instruct's ``[INST]`` turns; Llama the Llama-3 header turns; Qwen2 ChatML
(without Qwen's default system message); Gemma the template google/gemma-7b-it publishes, which has no system
role (a system message raises "System role not supported") and names the assistant ``model``. The recovery
prompt is a single user turn, so every one of them renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Mixtral-Instruct's own turn markers; BOS is added by the template, not by the tokenizer.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "[INST]", "[/INST]")

# google/gemma-7b-it's tokenizer_config.json chat_template, as published.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatFormat:
    """A tokenizer's special tokens (pad first), its BOS (None: none, as Qwen's) and EOS, and its chat
    template."""

    specials: tuple[str, ...] = SPECIAL_TOKENS
    bos: str | None = "<s>"
    eos: str = "</s>"
    template: str = CHAT_TEMPLATE
    pad: str = "<pad>"


MIXTRAL_CHAT = ChatFormat()
FAMILY_CHATS = {
    "mixtral": MIXTRAL_CHAT,
    "mistral": MIXTRAL_CHAT,
    "llama": ChatFormat(
        ("<pad>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
        "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE,
    ),
    "qwen2": ChatFormat(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>", CHATML_TEMPLATE,
                        pad="<|endoftext|>"),
    "gemma": ChatFormat(("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
                        GEMMA_TEMPLATE),
}
