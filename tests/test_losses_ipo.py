"""IPO's length averaging (lit_idpo.losses.sequence_logps_for_loss) and the module's use of it."""

import pytest
import torch

from lit_idpo.losses import LOSS_TYPES, sequence_logps_for_loss


def test_ipo_divides_each_column_by_its_completion_length():
    sums = torch.tensor([[-6.0, -9.0, -2.0], [-3.0, -4.5, -8.0]])  # [layers, sequences]
    lengths = torch.tensor([3, 9, 0])  # a sequence with no scored token counts as one
    expected = torch.tensor([[-2.0, -1.0, -2.0], [-1.0, -0.5, -8.0]])
    torch.testing.assert_close(sequence_logps_for_loss(sums, lengths, "ipo"), expected)


@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t != "ipo"])
def test_other_loss_types_compare_the_sums(loss_type):
    sums = torch.tensor([[-6.0, -9.0]])
    assert sequence_logps_for_loss(sums, torch.tensor([3, 9]), loss_type) is sums
