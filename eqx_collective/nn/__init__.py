"""Layers and initialisers: the counterparts of brainstate's layers used in the
collective-operations tutorial.

Layers are immutable Equinox modules, all derived from [`eqx_collective.nn.Layer`][]:
every layer answers `init_state` / `reset_state` (pure call protocol: they return the
updated layer; a no-op `return self` for layers without state), as every brainstate
module does. The forward call of a layer with hidden state (the recurrent cells)
returns `(output, updated_layer)` (see [`eqx_collective.nn.StatefulLayer`][]).
Initialisers accept a `brainunit` unit.
"""

from ._activations import GELU as GELU, ReLU as ReLU
from ._dropout import Dropout as Dropout
from ._equinox import PerExample as PerExample, WithState as WithState
from ._initialisers import (
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
from ._layer import (
    is_stateful as is_stateful,
    Layer as Layer,
    StatefulLayer as StatefulLayer,
)
from ._linear import Linear as Linear
from ._rnn import (
    GRUCell as GRUCell,
    LSTMCell as LSTMCell,
    RNNCell as RNNCell,
    ValinaRNNCell as ValinaRNNCell,
    VanillaRNNCell as VanillaRNNCell,
)
from ._sequential import Sequential as Sequential
