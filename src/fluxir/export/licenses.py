"""The licence an export carries: the generator's (not this project's), looked up by model id; any other model
needs ``export.license``. The texts are pointers to the licences, restating the sections that bind a Derivative.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
FLUX_DEV_LICENSE_LINK = "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"


@dataclass(frozen=True)
class LicenseInfo:
    license: str  # Hugging Face licence id: "apache-2.0", or "other" with a name and link
    license_name: str | None = None
    license_link: str | None = None
    title: str = ""  # the licence's own title and version, for people
    non_commercial: bool = False  # the FLUX.1 [dev] terms: no commercial or production use (4(a))

    def card_fields(self) -> dict[str, str]:
        fields = {"license": self.license}
        if self.license_name:
            fields["license_name"] = self.license_name
        if self.license_link:
            fields["license_link"] = self.license_link
        return fields


GENERATOR_LICENSES: dict[str, LicenseInfo] = {
    FLUX_DEV: LicenseInfo(
        license="other",
        license_name="flux-1-dev-non-commercial-license",
        license_link=FLUX_DEV_LICENSE_LINK,
        title="FLUX.1 [dev] Non-Commercial License v1.1.1",
        non_commercial=True,
    ),
    FLUX_SCHNELL: LicenseInfo(
        license="apache-2.0",
        license_link="https://huggingface.co/black-forest-labs/FLUX.1-schnell/blob/main/README.md",
        title="Apache License 2.0",
    ),
}


def generator_license(model: str, license_model: str | None, override: Mapping[str, Any] | None) -> LicenseInfo:
    """``override`` (``export.license``) wins; else the known licence of ``license_model`` or, when null, ``model``."""
    if override:
        unknown = set(override) - {"license", "license_name", "license_link", "title"}
        if unknown or "license" not in override:
            raise ValueError(
                f"export.license {dict(override)!r} must be a mapping with `license` (a Hugging Face licence id "
                "such as apache-2.0, or `other`) and, for `other`, `license_name` and `license_link`; "
                f"unknown keys: {sorted(unknown)}"
            )
        return LicenseInfo(
            license=str(override["license"]),
            license_name=override.get("license_name"),
            license_link=override.get("license_link"),
            title=str(override.get("title") or override.get("license_name") or override["license"]),
            non_commercial=str(override.get("license_name") or "") == GENERATOR_LICENSES[FLUX_DEV].license_name,
        )
    key = license_model or model
    if key in GENERATOR_LICENSES:
        return GENERATOR_LICENSES[key]
    raise ValueError(
        f"the licence of generator {key!r} is unknown to fluxir (known: {sorted(GENERATOR_LICENSES)}): set "
        "export.license to {license: <Hugging Face licence id or other>, license_name: ..., license_link: ...} "
        "as the model's own card states (FluxIRAdapter.save_pretrained: license={...}), or export.license_model "
        "to the hub id the model is a copy of"
    )


def attribution_notice(info: LicenseInfo, modified: str) -> str:
    """The NOTICE file of a Derivative: the Attribution Notice (FLUX.1 [dev] 3(b)) and that it was modified (3(c))."""
    if info.non_commercial:
        return (
            "FLUX.1 [dev] Model, Software and/or Output is licensed by Black Forest Labs, Inc. under the FLUX.1 [dev] "
            "Non-Commercial License. Copyright Black Forest Labs, Inc.\n"
            "IN NO EVENT SHALL BLACK FOREST LABS, INC. BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER "
            "IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH USE OF THIS "
            "MODEL.\n\n"
            f"Modified: {modified}\n"
        )
    where = info.license_link or info.license
    return f"The base model is licensed under {info.title or info.license} ({where}).\n\n{modified}\n"


def license_file_text(info: LicenseInfo, base_model: str) -> str:
    """The LICENSE file: a pointer to the generator's licence and, for FLUX.1 [dev], its binding sections."""
    head = (
        f"This folder is bound by the licence of its base model {base_model}: {info.title or info.license}.\n"
        f"Full text: {info.license_link or 'see the base model card'}\n\n"
        "This file is a pointer to that licence, not its text: read and accept the licence at the link above.\n"
    )
    if not info.non_commercial:
        return head
    return head + (
        "\nSections of the FLUX.1 [dev] Non-Commercial License that bind this Derivative and data produced with it\n"
        "(restated; the licence's own words govern):\n"
        "- 2(b): use, Distribution and Derivatives for Non-Commercial Purposes only.\n"
        "- 2(d): Output may not be used to train, fine-tune or distill a model competitive with FLUX.1 [dev].\n"
        "- 2(e): Output may be created or distributed only with content filters against unlawful or infringing\n"
        "  content or review before distribution, and with a disclosure that it is AI-generated where the law\n"
        "  requires one.\n"
        "- 3(a)-(c): a Distributed Derivative carries a copy of (here: a pointer to) the licence, the Attribution\n"
        "  Notice (file NOTICE) and a statement that the model was modified (in NOTICE).\n"
        "- 3(e): a Derivative must not be presented as an official or endorsed product of Black Forest Labs.\n"
        "- 4(a): no commercial or production use of the model, of Derivatives, or of any data produced by the\n"
        "  model.\n"
    )
