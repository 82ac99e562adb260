"""DeepSeek-V3 / Kimi-K2: the same routing as GLM-4.5 (noaux_tc), with MLA attention."""

from harness.archs.glm4_moe import Glm4MoeArch


class DeepseekV3Arch(Glm4MoeArch):
    model_type = "deepseek_v3"
