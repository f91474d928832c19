"""Layers and initialisers: the counterparts of brainstate's layers used in the
collective-operations tutorial.

Layers are immutable Equinox modules. Layers with hidden state (the recurrent cells)
follow the pure call protocol: `init_state` / `reset_state` return the updated layer,
and the forward call returns `(output, updated_layer)` (see
[`eqx_collective.nn.StatefulLayer`][]). Initialisers accept a `brainunit` unit.
"""

from ._activations import GELU as GELU, ReLU as ReLU
from ._dropout import Dropout as Dropout
from ._equinox import PerExample as PerExample, WithState as WithState
from ._init import (
    compute_fans as compute_fans,
    Constant as Constant,
    Initialiser as Initialiser,
    KaimingNormal as KaimingNormal,
    KaimingUniform as KaimingUniform,
    Normal as Normal,
    Orthogonal as Orthogonal,
    TruncatedNormal as TruncatedNormal,
    Uniform as Uniform,
    VarianceScaling as VarianceScaling,
    XavierNormal as XavierNormal,
    XavierUniform as XavierUniform,
    ZeroInit as ZeroInit,
)
from ._linear import Linear as Linear
from ._rnn import (
    GRUCell as GRUCell,
    LSTMCell as LSTMCell,
    RNNCell as RNNCell,
    ValinaRNNCell as ValinaRNNCell,
    VanillaRNNCell as VanillaRNNCell,
)
from ._sequential import (
    is_stateful as is_stateful,
    Sequential as Sequential,
    StatefulLayer as StatefulLayer,
)
