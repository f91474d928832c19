"""Pure-functional collective operations for Equinox: initialise, reset, batch into
ensembles and restore every stateful module of a model in one call."""

from . import nn as nn
from ._assign import (
    assign_state_values as assign_state_values,
    AssignResult as AssignResult,
)
from ._checkpoint import (
    load_states as load_states,
    LoadResult as LoadResult,
    save_states as save_states,
)
from ._collective import (
    call_all_fns as call_all_fns,
    call_order as call_order,
    collect_all_fns as collect_all_fns,
    init_all_states as init_all_states,
    reset_all_states as reset_all_states,
)
from ._ensemble import (
    as_ensemble as as_ensemble,
    ensemble_in_axes as ensemble_in_axes,
    ensemble_shape as ensemble_shape,
    ensemble_size as ensemble_size,
    member as member,
    shard_ensemble as shard_ensemble,
    split_members as split_members,
    stack as stack,
    take_members as take_members,
    unstack as unstack,
    where_members as where_members,
)
from ._filters import (
    All as All,
    Any as Any,
    Filter as Filter,
    Not as Not,
    PathContains as PathContains,
    PathPrefix as PathPrefix,
)
from ._jit import clear_caches as clear_caches, filter_jit as filter_jit
from ._orbax import load_sharded as load_sharded, save_sharded as save_sharded
from ._partition import combine as combine, partition as partition
from ._paths import as_path as as_path, Path as Path, path_str as path_str
from ._state import (
    HiddenState as HiddenState,
    is_shared as is_shared,
    LongTermState as LongTermState,
    NonBatchState as NonBatchState,
    ParamState as ParamState,
    ShortTermState as ShortTermState,
    State as State,
)
from ._views import (
    leaf_values as leaf_values,
    state_values as state_values,
    states as states,
)
from ._vmap import (
    make_ensemble as make_ensemble,
    vmap_call_all_fns as vmap_call_all_fns,
    vmap_init_all_states as vmap_init_all_states,
    vmap_reset_all_states as vmap_reset_all_states,
)


__version__ = "0.1.0"
