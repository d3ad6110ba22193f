"""Test support, kept out of the product: the tiny vision-language model builder (tests and benchmarks need a VLM
with a real chat template where no weights can be downloaded) and the adapters of the reference libraries our
engines are checked and measured against (pytorch-grad-cam for CAMs, torchcam for faithfulness).

The product never imports this package (a test greps for it); tests, benchmarks and scripts do."""
