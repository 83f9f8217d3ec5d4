"""The data layer: one HDF5 store layout for every split, task and stage.

Readers per source format turn volumes into slices (see :mod:`kdmri.data.prepare`); every
later stage reads and writes :mod:`kdmri.data.store` files through the same functions.
"""

from kdmri.data.store import SliceDataset, StoreWriter, read_store, store_info, write_store

__all__ = ["SliceDataset", "StoreWriter", "read_store", "store_info", "write_store"]
