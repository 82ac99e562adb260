"""DeepSeek-V3 / Kimi-K2: the same routing as GLM-4.5 (noaux_tc), with multi-head latent attention (MLA)."""

from harness.archs.glm4_moe import Glm4MoeArch
from harness.archs.layout import Shapes


class DeepseekV3Arch(Glm4MoeArch):
    model_type = "deepseek_v3"

    def attention_shapes(self, i: int, p: str) -> Shapes:
        """MLA: keys and values from a `kv_lora_rank` latent (plus a shared rope key), queries from a
        `q_lora_rank` latent when the config has one (V3, K2) or directly (V2-Lite)."""
        c, a = self.config, p + "self_attn."
        H, nh = c["hidden_size"], c["num_attention_heads"]
        nope, rope, v = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        kv_rank, q_rank = c["kv_lora_rank"], c.get("q_lora_rank")
        out = {a + "kv_a_proj_with_mqa.weight": (kv_rank + rope, H), a + "kv_a_layernorm.weight": (kv_rank,),
               a + "kv_b_proj.weight": (nh * (nope + v), kv_rank), a + "o_proj.weight": (H, nh * v)}
        if q_rank:
            out.update({a + "q_a_proj.weight": (q_rank, H), a + "q_a_layernorm.weight": (q_rank,),
                        a + "q_b_proj.weight": (nh * (nope + rope), q_rank)})
        else:
            out[a + "q_proj.weight"] = (nh * (nope + rope), H)
        return out
