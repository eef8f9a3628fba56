"""Writes tests/fixtures/gluoncv_cifar_logits.json: gluon-cv's own CIFAR networks' logits for fixed
weights, which tests/test_cifar.py compares with bot/models/cifar.py's on the same weights.

Needs MXNet (pip install mxnet==1.9.1 "numpy<1.24", apart from the project's environment) and
gluon-cv's two model files, which import only MXNet, in the current folder:

    git -C gluon-cv show HEAD:gluoncv/model_zoo/cifarresnet.py > g_cifarresnet.py
    git -C gluon-cv show HEAD:gluoncv/model_zoo/cifarwideresnet.py > g_cifarwideresnet.py
    PYTHONPATH=. python docs/cifar/gluoncv_logits.py $(git -C gluon-cv rev-parse HEAD) \
        > tests/fixtures/gluoncv_cifar_logits.json

Every tensor of the network, in gluon-cv's parameter order (which is ours: tests/test_cifar.py's
`fill`), is drawn from its own seeded generator: 1-D ones (BN gamma, beta, running mean and
variance, the classifier's bias) uniform in [0.5, 1.5], the others uniform in +-sqrt(3 / fan_in).
The input BN's fixed gamma and beta (scale=False, center=False: 1 and 0, never trained) are skipped;
ours has none.
"""

import json
import sys

import mxnet as mx
import numpy as np
from mxnet import nd

import g_cifarresnet
import g_cifarwideresnet

NETS = {  # our builder's arguments -> gluon-cv's network
    "cifar_resnet20_v1": lambda: g_cifarresnet.get_cifar_resnet(1, 20, classes=10),
    "cifar_resnet20_v2": lambda: g_cifarresnet.get_cifar_resnet(2, 20, classes=10),
    "cifar_wrn16_2": lambda: g_cifarwideresnet.get_cifar_wide_resnet(16, 2, classes=10),
}


def tensor(i, shape):
    rng = np.random.default_rng([2019, i])
    if len(shape) == 1:
        return rng.uniform(0.5, 1.5, shape).astype("float32")
    bound = np.sqrt(3 / np.prod(shape[1:]))
    return rng.uniform(-bound, bound, shape).astype("float32")


def main():
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32")
    out = {"gluoncv_commit": sys.argv[1], "mxnet": mx.__version__, "logits": {}}
    for name, make in NETS.items():
        net = make()
        net.initialize()
        net(nd.array(x))  # gluon infers the shapes
        params = [p for p in net.collect_params().values() if not (p.grad_req == "null" and
                                                                     p.name.endswith(("gamma", "beta")))]
        for i, p in enumerate(params):
            p.set_data(nd.array(tensor(i, p.shape)))
        logits = net(nd.array(x)).asnumpy()  # inference: the running statistics
        out["logits"][name] = [[round(float(v), 6) for v in row] for row in logits]
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
