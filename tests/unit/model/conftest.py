import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small convolutions lose more to thread hand-offs than they gain on a 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
