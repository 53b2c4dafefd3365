"""cfx.generators: counterfactual generators and property edits (stage 2 of the pipeline).

Installed as ``cfx.generators`` (``pyproject.toml`` maps this folder into the ``cfx`` namespace). The generators
(image/feature/latent gradient descent, reconstruction, latent nearest neighbours) and the property editors with
EPGM arrive with their issues; see ``../shared/design/architecture.md``.
"""

__all__: list[str] = []
