import jax
import pytest

from sleep_jax.parallel.mesh import make_mesh, mesh_shape


def test_mesh_shape_fills_the_minus_one_axis():
    assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert mesh_shape({"data": 1, "fsdp": 1, "tensor": 1}, 1) == (1, 1, 1)


@pytest.mark.parametrize("mesh, message", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "mesh.data=3, mesh.fsdp=1, mesh.tensor=1"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, "mesh.data=-1"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, "mesh.fsdp=-1"),
    ({"data": 0, "fsdp": 1, "tensor": 1}, "mesh.data=0"),
    ({"data": 8, "pipeline": 1}, "mesh.pipeline"),
])
def test_mesh_that_does_not_divide_the_devices_names_the_key(mesh, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        mesh_shape(mesh, 8)


def test_make_mesh_names_its_axes_and_accepts_a_device_subset():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    single = make_mesh({"data": -1}, jax.devices()[:1])
    assert dict(single.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
