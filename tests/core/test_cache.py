import threading

import torch

from fmseg import EmbeddingCache


def test_cache_byte_accounting_survives_concurrent_use():
    cache = EmbeddingCache(max_bytes=40 * 4 * 100)  # room for 40 tensors of 100 floats

    def work(offset):
        for i in range(300):
            cache.put(f"k{(offset + i) % 64}", torch.zeros(100))
            cache.get(f"k{(offset * 7 + i) % 64}")

    threads = [threading.Thread(target=work, args=(t * 13,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.nbytes == sum(v.nbytes for v in cache._items.values())
    assert cache.nbytes <= cache.max_bytes and len(cache) <= 40


def test_disk_entries_survive_eviction(tmp_path):
    cache = EmbeddingCache(max_bytes=4 * 10, disk_dir=tmp_path)
    cache.put("a", torch.arange(10.0))
    cache.put("b", torch.ones(10))
    assert "a" in cache and len(cache) == 1
    assert torch.equal(cache.get("a"), torch.arange(10.0))
