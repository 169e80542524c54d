"""Code both services share: TensorFlow set-up, logging, the model-artifact format.

Also, for tests and benchmarks only (the services never import them):
starting a server as a child process (``server_process``, ``end_with_launcher``).
"""
