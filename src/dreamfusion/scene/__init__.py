"""What a training view is: cameras around the object, the rays through their pixels, the view's prompt."""
