"""What a family's checkpoint stores, from its config.json alone: tensor keys and shapes (unquantised).

Sizing a sweep before anything is downloaded (`harness.checkpoint.inventory`, `harness.sweep.costs`) needs every
tensor a checkpoint holds. That is family knowledge, so it lives with the adapter: `MoEArch` inherits the layout
below, shared by the families that store a decoder stack of attention + MLP/MoE layers the usual way, and a family
overrides the piece that differs (its attention, its feed-forward block, which layers are MoE, extra modules).
Shapes are (rows, cols) as stored; dtypes and quantised formats are the inventory's job.
"""

from __future__ import annotations

from typing import Any, ClassVar

Shapes = dict[str, tuple[int, ...]]


def mlp_shapes(prefix: str, inter: int, hidden: int, names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
               ) -> Shapes:
    """A gated MLP (gate, up, down) under `prefix`."""
    gate, up, down = names
    return {f"{prefix}{gate}.weight": (inter, hidden), f"{prefix}{up}.weight": (inter, hidden),
            f"{prefix}{down}.weight": (hidden, inter)}


class TensorLayout:
    """The stored tensors of a family's text model; mixed into `MoEArch` (uses its config and class attributes)."""

    config: dict[str, Any]
    # Key prefixes (model, LM head) of the text model inside its multimodal wrapper's checkpoint (Llama-4's).
    wrapper_key_prefixes: ClassVar[tuple[str, str]] = ("language_model.model.", "language_model.")
    # The config key of a routed expert's intermediate size, and of a dense layer's.
    expert_size_key: ClassVar[str] = "moe_intermediate_size"
    dense_size_key: ClassVar[str] = "intermediate_size"
    # The config key of the number of shared experts (their MLP is that many experts wide); None: the family's
    # shared expert (if `shared_attr`) has its own size (`shared_expert_size`).
    shared_count_key: ClassVar[str | None] = None
    # True when o_proj has a bias whenever the attention has biases (ERNIE-4.5, Llama-4, gpt-oss).
    attention_output_bias: ClassVar[bool] = False

    # -- which layers ---------------------------------------------------------------------------------------
    def moe_layer_indices(self) -> list[int]:
        """The decoder layers with routed experts (the model's forward; MTP layers are not counted)."""
        c = self.config
        return list(range(self.leading_dense_layers(c), c["num_hidden_layers"]))

    # -- the whole text model --------------------------------------------------------------------------------
    def model_key_prefixes(self, wrapped: bool) -> tuple[str, str]:
        """(model, LM head) key prefixes: `model.` and none for a text-only checkpoint."""
        return self.wrapper_key_prefixes if wrapped else ("model.", "")

    def stored_shapes(self, wrapped: bool = False) -> Shapes:
        """Every tensor of the text model as the checkpoint stores it; `wrapped`: inside the multimodal wrapper."""
        c = self.config
        H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
        model, head = self.model_key_prefixes(wrapped)
        out: Shapes = {f"{model}embed_tokens.weight": (V, H), f"{model}norm.weight": (H,)}
        if not c.get("tie_word_embeddings", False):
            out[f"{head}lm_head.weight"] = (V, H)
        moe = set(self.moe_layer_indices())
        mtp = self.mtp_layers(c)
        for i in range(L + mtp):
            p = f"{model}layers.{i}."
            out.update(self.decoder_layer_shapes(i, p, moe=i in moe or i >= L))
            if i >= L:  # a multi-token-prediction layer (GLM-4.5, DeepSeek-V3): a decoder layer and its projections
                out.update({p + "eh_proj.weight": (H, 2 * H), p + "enorm.weight": (H,), p + "hnorm.weight": (H,),
                            p + "shared_head.norm.weight": (H,), p + "shared_head.head.weight": (V, H)})
        out.update(self.extra_module_shapes(wrapped))
        return out

    def extra_module_shapes(self, wrapped: bool) -> Shapes:
        """Modules stored beside the decoder stack (`extra_module_prefixes`); none by default."""
        return {}

    def decoder_layer_shapes(self, i: int, p: str, moe: bool) -> Shapes:
        H = self.config["hidden_size"]
        return {p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                **self.attention_shapes(i, p), **self.feed_forward_shapes(p, moe)}

    # -- attention ---------------------------------------------------------------------------------------
    def head_dim(self) -> int:
        c = self.config
        return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]

    def attention_shapes(self, i: int, p: str) -> Shapes:
        """Grouped-query attention under `self_attn.`, with q/k/v biases where the config says so."""
        c = self.config
        H, nh, hd = c["hidden_size"], c["num_attention_heads"], self.head_dim()
        nkv = c.get("num_key_value_heads") or nh
        a = p + "self_attn."
        out = {a + "q_proj.weight": (nh * hd, H), a + "k_proj.weight": (nkv * hd, H),
               a + "v_proj.weight": (nkv * hd, H), a + "o_proj.weight": (H, nh * hd)}
        if c.get("attention_bias") or c.get("use_bias"):
            out.update({a + "q_proj.bias": (nh * hd,), a + "k_proj.bias": (nkv * hd,), a + "v_proj.bias": (nkv * hd,)})
            if self.attention_output_bias:
                out[a + "o_proj.bias"] = (H,)
        return out

    def head_norm_shapes(self, p: str) -> Shapes:
        """Per-head q/k RMS norms (Qwen3, GLM-4.5 with `use_qk_norm`)."""
        hd = self.head_dim()
        return {p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)}

    # -- feed-forward -------------------------------------------------------------------------------------
    def feed_forward_shapes(self, p: str, moe: bool) -> Shapes:
        """A dense MLP, or the MoE block: router, its correction bias, routed experts (per expert or fused, in
        the hub's names), shared experts."""
        c = self.config
        H = c["hidden_size"]
        block = self.hub_block_attr or self.block_attr
        f = f"{p}{block}."
        if not moe:
            return mlp_shapes(f, c[self.dense_size_key], H)
        E, inter = self.num_experts, c[self.expert_size_key]
        out: Shapes = {f"{f}{self.router_attr}.weight": (E, H)}
        if self.has_correction_bias():
            out[p + self.correction_bias_key] = self.correction_bias_shape()
        fused = self.hub_fused_expert_names
        if fused is not None:
            out.update({f"{f}experts.{fused['gate_up']}": (E, 2 * inter, H),
                        f"{f}experts.{fused['down']}": (E, H, inter)})
        else:
            names = self.hub_expert_names
            for j in range(E):
                out.update(mlp_shapes(f"{f}experts.{j}.", inter, H, (names["gate"], names["up"], names["down"])))
        shared = self.shared_attr and self.shared_expert_size()
        if shared:
            out.update(mlp_shapes(f"{f}{self.shared_attr}.", shared, H))
        return out

    def has_correction_bias(self) -> bool:
        return self.correction_bias_key is not None

    def correction_bias_shape(self) -> tuple[int, ...]:
        return (self.num_experts,)

    def shared_expert_size(self) -> int:
        """The shared MLP's intermediate size (0: none)."""
        c = self.config
        if self.shared_count_key is None:
            return 0
        return c[self.expert_size_key] * int(c.get(self.shared_count_key) or 0)
