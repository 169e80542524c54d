"""Code both services share: TensorFlow set-up, logging, the model-artifact format."""
