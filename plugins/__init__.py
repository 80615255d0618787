"""Built-in components, registered through the ``cbdm`` entry-point group like any third-party plugin."""
