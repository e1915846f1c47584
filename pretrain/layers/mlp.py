from torch import nn


class Mlp(nn.Module):
    """fc1 -> activation -> fc2 (names as in the published weights). (..., D) -> (..., D_out)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
